"""Runtime: load an artifact folder and generate (`load(path).generate(...)`)."""

from .engine import Engine, Generation, load

__all__ = ["Engine", "Generation", "load"]
