"""The `jetspec-compile` command line. Subcommands are added by the modules that implement them."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import JetSpecError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jetspec-compile", description=__doc__)
    p.add_argument("--version", action="version", version=f"jetspec-compile {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return p


def _registrars():
    from .export.cli import register as export_commands
    from .runtime.cli import register as runtime_commands
    from .runtime.profile import register as profile_commands
    from .train import register_cli as train_commands

    return [export_commands, runtime_commands, profile_commands, train_commands]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except JetSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
