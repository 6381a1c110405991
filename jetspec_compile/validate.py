"""Argument validators: argparse ``type=`` callables that reject bad values with one clear message.

argparse turns an ``argparse.ArgumentTypeError`` into ``error: argument --NAME: MESSAGE``; the
``jetspec-compile`` parser prints that as one line and exits 1.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Callable

from .errors import JetSpecError

DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _bad(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer >= ``lo`` (and <= ``hi``)."""
    want = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad(f"{text!r} is not an integer; expected {want}") from None
        if value < lo or (hi is not None and value > hi):
            raise _bad(f"{value} is out of range; expected {want}")
        return value

    parse.__name__ = want
    return parse


INT32_MAX = 2**31 - 1
SEED_MAX = 2**64 - 1
THREADS_MAX = 1024


def int_list(lo: int = 1, hi: int | None = None) -> Callable[[str], list[int]]:
    """A comma-separated, non-empty list of integers in [lo, hi], e.g. ``--budgets 8,16,32``."""
    one = at_least(lo, hi)

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise _bad(f"{text!r} is not a comma-separated list; expected e.g. 8,16,32")
        return [one(p) for p in parts]

    parse.__name__ = "comma-separated integers"
    return parse


def finite(lo: float = 0.0, *, strict: bool = False, hi: float | None = None) -> Callable[[str], float]:
    """A finite number >= ``lo`` (> ``lo`` when ``strict``), optionally <= ``hi``."""
    want = f"a finite number {'>' if strict else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _bad(f"{text!r} is not a number; expected {want}") from None
        if not math.isfinite(value) or value < lo or (strict and value == lo) or (hi is not None and value > hi):
            raise _bad(f"{text} is out of range; expected {want}")
        return value

    parse.__name__ = want
    return parse


def probability(text: str) -> float:
    """0 < p <= 1 (top-p)."""
    return finite(0.0, strict=True, hi=1.0)(text)


def utf8_text(text: str) -> str:
    """A string that was valid UTF-8 on the command line (Python maps invalid bytes to surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad(f"not valid UTF-8 (byte {e.start}); expected UTF-8 text") from None
    return text


def nonempty_text(text: str) -> str:
    """A non-empty UTF-8 string (stop strings)."""
    if not text:
        raise _bad("is empty; expected a non-empty string")
    return utf8_text(text)


def device(text: str) -> str:
    """cpu, cuda or cuda:N."""
    if not DEVICE_RE.match(text):
        raise _bad(f"{text!r} is not a device; expected cpu, cuda or cuda:N")
    return text


def out_folder(text: str) -> str:
    """An output folder that can be created: not under /proc, /sys or /dev, below a writable folder."""
    from .atomic import check_out_folder

    utf8_text(text)
    try:
        check_out_folder(Path(text))
    except JetSpecError as e:
        raise _bad(str(e)) from None
    return text


def torch_device(value):
    """``torch.device(value)`` for 'cpu', 'cuda', 'cuda:N' or a torch.device; JetSpecError otherwise."""
    import torch

    if isinstance(value, torch.device):
        return value
    if not isinstance(value, str) or not DEVICE_RE.match(value):
        raise JetSpecError(f"device {value!r}; expected cpu, cuda or cuda:N")
    return torch.device(value)
