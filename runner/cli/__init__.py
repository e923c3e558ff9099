"""The `recipe` command (runner.cli.app)."""
from runner.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
