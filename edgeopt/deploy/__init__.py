"""The deploy road: compile per-target artifacts, validate them in their runtimes, report, bundle for devices."""
