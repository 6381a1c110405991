"""Prompt files: JSONL, one object per line with a "prompt" string (as common benchmark sets are)."""

from __future__ import annotations

import json
from pathlib import Path

from jetspec_compile.errors import JetSpecError


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise JetSpecError(f"{path}: prompt file not found (expected JSONL with a 'prompt' string per line)")
    prompts = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise JetSpecError(f"{path}:{i}: invalid JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise JetSpecError(f"{path}:{i}: field 'prompt' is missing or not a string")
        prompts.append(obj["prompt"])
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise JetSpecError(f"{path}: no prompts (expected JSONL with a 'prompt' string per line)")
    return prompts
