"""Subcommands of the ``vfmtok`` command, each module exposing ``register(subparsers)``."""
