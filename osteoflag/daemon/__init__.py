"""osteoflag.daemon."""
