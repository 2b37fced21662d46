"""The `scd` command. Each area registers its own subcommands through `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that each expose `add_parser(subparsers)`; order = order in `scd --help`.
COMMAND_MODULES = [
    "scd.data.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scd", description="Separable Causal Diffusion world models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"scd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
