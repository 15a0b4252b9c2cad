"""``vfmtok bench``: the benchmark pipeline as a subcommand of the library's CLI.

The harness adds it through the ``vfmtok.commands`` entry-point group (``pyproject.toml``); the library's CLI
does not know the harness.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the epilog's line breaks."""


def _run_module() -> ModuleType:  # heavy (torch-fidelity, hydra, the whole pipeline): not for `vfmtok --help`
    return importlib.import_module("benchmarks.run")


def _bench(args: argparse.Namespace) -> int:
    return _run_module().main(args.overrides + (["--show"] if args.show else []))


def _epilog() -> str:
    text = _run_module().help_text("vfmtok bench")
    return text[text.index("presets ("):]  # argparse prints the usage line and options itself


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``vfmtok`` parser."""
    p = subparsers.add_parser("bench", help="run the benchmark pipeline (hydra overrides, e.g. preset=smoke)",
                              formatter_class=_Formatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="hydra overrides, e.g. preset=smoke")
    p.add_argument("--show", action="store_true", help="print the composed configuration and label, do not run")
    p.set_defaults(func=_bench)
    usage = p.format_help
    p.format_help = lambda: usage() + "\n" + _epilog()  # type: ignore[method-assign]  # built on demand
