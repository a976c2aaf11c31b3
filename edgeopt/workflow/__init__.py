"""Whole runs from a file: optimize (passes, then targets) and YAML recipes with their compile section."""
