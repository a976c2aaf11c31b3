"""``python -m edgeopt`` runs the CLI."""

from edgeopt.cli import main

main()
