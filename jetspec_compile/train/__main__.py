"""``python -m jetspec_compile.train train-head ...``: the same command as ``jetspec-compile train-head ...``
(one-line errors with exit 1, Ctrl-C / SIGTERM handled the same way)."""

from ..cli import entry

entry()
