"""osteoflag.inference."""
