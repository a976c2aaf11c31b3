"""Per-target backends, listed explicitly."""
