"""osteoflag.db."""
