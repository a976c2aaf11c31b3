"""The edgeopt command line: the typer app, its renderers and the demo. It owns the terminal."""

from edgeopt.cli.commands import app, main

__all__ = ["app", "main"]
