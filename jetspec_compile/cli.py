"""The `jetspec-compile` command line. Subcommands are added by the modules that implement them.

Every failure the user can cause ends in one line on stderr, ``error: ...``, and exit status 1: bad
arguments (argparse), bad inputs (JetSpecError), and file-system errors (OSError). Ctrl-C or SIGTERM
ends a command with ``interrupted`` and exit status 130 (143 for SIGTERM); commands that write folders
remove their partial output on the way out.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import threading
import warnings
from typing import NoReturn

from . import __version__
from .errors import JetSpecError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 1."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="jetspec-compile", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"jetspec-compile {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for register in _registrars():
        register(sub)
    return p


def _registrars():
    from .export.cli import register as export_commands
    from .runtime.cli import register as runtime_commands
    from .runtime.profile import register as profile_commands
    from .runtime.serve.cli import register as serve_commands
    from .train import register_cli as train_commands

    return [export_commands, runtime_commands, profile_commands, serve_commands, train_commands]


class _Signals:
    """SIGINT / SIGTERM raise KeyboardInterrupt once (so context managers clean up); the signal is kept,
    so an interrupt that reaches us wrapped in another exception (e.g. through a compiled graph's C++
    frames) is still reported as an interrupt."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:  # a second signal during the clean-up does not interrupt the clean-up
            self.signum = signum
            raise KeyboardInterrupt


# Deprecation notices raised inside torch itself (not by this package's calls), which
# would otherwise spill into every export's output. Matched by category and the start of the message, so any
# other warning still shows.
KNOWN_LIBRARY_WARNINGS = [
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # torch.utils._pytree, from export
    (FutureWarning, r"`torch\._prims_common\.check` is deprecated"),  # torch._inductor.lowering
]


# Log records of the same kind: without torchvision (which this package does not need), torch.onnx's exporter
# logs "torchvision is not installed. Skipping torchvision::..." eight times per exported graph.
KNOWN_LIBRARY_LOG_RECORDS = [
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
]


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _quiet_known_library_warnings() -> None:
    for category, message in KNOWN_LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for logger, prefix in KNOWN_LIBRARY_LOG_RECORDS:
        log = logging.getLogger(logger)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in log.filters):
            log.addFilter(_DropMessages(prefix))


def main(argv: list[str] | None = None) -> int:
    _quiet_known_library_warnings()
    with _Signals() as signals:
        try:
            return _run(argv)
        except KeyboardInterrupt:
            return _interrupted(signals.signum or signal.SIGINT)
        except Exception:
            if signals.signum is not None:
                return _interrupted(signals.signum)
            raise


def _run(argv: list[str] | None) -> int:
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
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


def _interrupted(signum: int) -> int:
    sys.stdout.flush()
    print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum


_INTERRUPTED = {128 + signal.SIGINT, 128 + signal.SIGTERM}


def entry(argv: list[str] | None = None) -> NoReturn:
    """The process entry (console script and ``python -m``): runs `main` and exits with its status.

    An interrupt that was raised while C++ code ran Python through ``PyRun_*`` sets CPython's global
    "unhandled KeyboardInterrupt" flag even though `main` handled it; under ``python -m`` the interpreter
    then kills itself with SIGINT on the way out, whatever status `main` returned. So an interrupted
    command runs the exit handlers and leaves with ``os._exit``, keeping its status (130 / 143)."""
    code = main(argv)
    if code in _INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
