"""Run registered passes by name: the registry of passes and presets with typed options, and the verifying pipeline."""
