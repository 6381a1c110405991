"""Prompt files: JSONL, one object per line with a "prompt" string (as common benchmark sets are)."""

from __future__ import annotations

from pathlib import Path

from jetspec_compile.errors import JetSpecError
from jetspec_compile.jsonfiles import jsonl_values


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise JetSpecError(f"{path}: prompt file not found (expected JSONL with a 'prompt' string per line)")
    if limit is not None and limit < 1:
        raise JetSpecError(f"limit is {limit}; expected an integer >= 1")
    prompts = []
    for i, obj in jsonl_values(path, _text(path)):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise JetSpecError(f"{path}:{i}: field 'prompt' is missing or not a string")
        try:
            obj["prompt"].encode("utf-8")
        except UnicodeEncodeError:
            raise JetSpecError(f"{path}:{i}: field 'prompt' has a lone surrogate escape; expected valid Unicode "
                               "text") from None
        prompts.append(obj["prompt"])
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise JetSpecError(f"{path}: no prompts (expected JSONL with a 'prompt' string per line)")
    return prompts


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JetSpecError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise JetSpecError(f"{path}:{line}: not UTF-8 (byte {e.start}); expected UTF-8 JSONL with a 'prompt' "
                           "string per line") from None
