"""Reading JSON and JSONL files with one-line errors that name the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .errors import JetSpecError


def read_json(path: Path, needs: str):
    """The JSON value in ``path``. Errors: the file is missing (``needs`` says what its folder must hold), or
    it is not valid JSON."""
    if not path.is_file():
        raise JetSpecError(f"{path}: not found ({needs})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise JetSpecError(f"{path}: invalid JSON ({e})") from None


def jsonl_values(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line number, value) for every non-blank line of ``text``, the JSONL content of ``path``."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise JetSpecError(f"{path}:{n}: invalid JSON ({e})") from None
        yield n, value
