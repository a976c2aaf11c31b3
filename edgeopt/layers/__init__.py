"""The layer-dropping road: remove the residual blocks that matter least on data, with least-squares repair."""
