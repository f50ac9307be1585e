"""``python -m helpline`` runs the CLI."""

from helpline.cli import main

main()
