"""The pruning road: structured channel and head pruning and magnitude pruning of a model file, with its report."""
