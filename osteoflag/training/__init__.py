"""osteoflag.training."""
