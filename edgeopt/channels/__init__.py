"""Coupled channel groups (the engine of channel pruning): op rules, channel scores, cut plans, repairs."""
