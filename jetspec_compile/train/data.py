"""Training sequences: documents, tokenised sequences, target regeneration, anchor sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import JetSpecError
from ..jsonfiles import jsonl_values
from ..target import Target
from .progress import _progress

def sample_anchors(length: int, anchors: int, generator: torch.Generator, first: int = 1) -> Tensor:
    """Up to ``anchors`` distinct anchor positions in [max(first, 0), length - 2] (sorted, int64).

    An anchor needs at least one supervised slot (the token after it), hence the ``length - 2`` bound.
    """
    lo, hi = max(0, int(first)), length - 2
    if hi < lo:
        return torch.zeros(0, dtype=torch.long)
    count = hi - lo + 1
    if anchors >= count:
        return torch.arange(lo, hi + 1)
    return (torch.randperm(count, generator=generator)[:anchors] + lo).sort().values


# ---- sequences and data ------------------------------------------------------------------------------

@dataclass
class TrainSequence:
    """Token ids of one training sequence; anchors are drawn from positions >= first_anchor."""

    ids: Tensor
    first_anchor: int = 1


def _as_sequence(s) -> TrainSequence:
    if isinstance(s, TrainSequence):
        return s
    if isinstance(s, tuple):
        return TrainSequence(torch.as_tensor(s[0], dtype=torch.long).reshape(-1), int(s[1]))
    return TrainSequence(torch.as_tensor(s, dtype=torch.long).reshape(-1), 1)


def load_documents(paths: Sequence[str | Path]) -> list[tuple[str, bool]]:
    """Read training documents: (text, is_prompt) pairs.

    A ``.jsonl`` file holds one JSON object per line with a ``"text"`` string (a document) or a
    ``"prompt"`` string (a prompt, for ``--regenerate``). Any other file is one text document. A folder
    contributes its ``*.py``, ``*.txt``, ``*.md`` and ``*.jsonl`` files (recursively, sorted).
    """
    docs: list[tuple[str, bool]] = []
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".py", ".txt", ".md", ".jsonl"))
            if not found:
                raise JetSpecError(f"{p}: data folder has no *.py, *.txt, *.md or *.jsonl files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise JetSpecError(f"{p}: data file not found")
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise JetSpecError(f"{f}: cannot read data file ({e})") from None
        if f.suffix != ".jsonl":
            if text:
                docs.append((text, False))
            continue
        for n, obj in jsonl_values(f, text):
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                docs.append((obj["text"], False))
            elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                docs.append((obj["prompt"], True))
            else:
                raise JetSpecError(f"{f}:{n}: expected an object with a string field 'text' (or 'prompt')")
    if not docs:
        raise JetSpecError(f"{', '.join(str(p) for p in paths)}: no training documents found (all empty)")
    return docs


def make_sequences(
    token_docs: Iterable[list[int]],
    seq_len: int,
    *,
    eos_token_id: int | None = None,
    min_len: int = 3,
) -> list[Tensor]:
    """Split each tokenised document (+ EOS) into pieces of at most ``seq_len`` tokens; short tails dropped."""
    out = []
    for ids in token_docs:
        ids = list(ids) + ([eos_token_id] if eos_token_id is not None else [])
        for i in range(0, len(ids), seq_len):
            piece = ids[i:i + seq_len]
            if len(piece) >= min_len:
                out.append(torch.tensor(piece, dtype=torch.long))
    return out


@torch.no_grad()
def regenerate(
    target: Target,
    prompts: Sequence[Tensor],
    max_new_tokens: int | None = None,
    *,
    total_len: int | None = None,
    eos_token_id: int | None = None,
    batch: int = 16,
    progress: bool = True,
) -> list[TrainSequence]:
    """Replace responses with the target's greedy continuation (the paper trains on regenerated data).

    Each prompt (1-D ids) is continued greedily for ``max_new_tokens`` tokens, or up to ``total_len``
    tokens in all (stopping after EOS), with
    Hugging Face ``generate(do_sample=False)``; prompts of equal length are batched (no padding). The
    result's anchors start at the last prompt token (``first_anchor = len(prompt) - 1``): that is the anchor
    of the first decoding round, whose block drafts the first generated tokens.
    """
    if (max_new_tokens is None) == (total_len is None):
        raise JetSpecError("regenerate: pass exactly one of max_new_tokens and total_len")
    model = target.model
    pad = eos_token_id if eos_token_id is not None else 0
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if p.numel() < 1:
            raise JetSpecError(f"regenerate: prompt {i} is empty")
        by_len.setdefault(int(p.numel()), []).append(i)
    out: list[TrainSequence | None] = [None] * len(prompts)
    groups = [(n, idx[j:j + batch]) for n, idx in sorted(by_len.items()) for j in range(0, len(idx), batch)]
    with _progress(progress, "regenerate", len(prompts)) as bar:
        for n, idx in groups:
            ids = torch.stack([prompts[i].reshape(-1) for i in idx]).to(target.device)
            new_tokens = max_new_tokens if total_len is None else total_len - n
            if new_tokens < 1:
                raise JetSpecError(f"regenerate: a prompt of {n} tokens leaves no room within total_len {total_len}")
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=0, do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad)
            for row, i in zip(gen, idx):
                new = row[n:].tolist()
                if eos_token_id is not None and eos_token_id in new:
                    new = new[: new.index(eos_token_id) + 1]
                out[i] = TrainSequence(torch.cat([row[:n].cpu(), torch.tensor(new, dtype=torch.long)]), n - 1)
            bar.advance(len(idx))
    return [s for s in out if s is not None]
