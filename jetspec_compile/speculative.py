"""Kept only for ``runtime/engine.py``, which still imports ``EagerGraphs`` from here (that file has
another owner). The eager oracle lives in ``jetspec_compile/eager_oracle.py``; switch the import there and
delete this file."""

from .eager_oracle import EagerGraphs

__all__ = ["EagerGraphs"]
