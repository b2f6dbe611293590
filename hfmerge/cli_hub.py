"""`hfmerge` commands for the hub side (registered by hfmerge.cli)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
