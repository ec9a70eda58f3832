"""osteoflag.pacs."""
