"""Measuring: timed runs of ar_step decoding, Hugging Face generate() (plain and prompt lookup) and
speculative decoding at every budget, every method on every prompt in each repetition."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from jetspec_compile.errors import JetSpecError

STAGES = ("draft", "verify", "host", "commit")
HF_LOOKUP = 10  # prompt_lookup_num_tokens of the Hugging Face prompt-lookup baseline (its usual setting)


def quantile(xs: Sequence[float], q: float) -> float:
    """Quantile with linear interpolation (q in [0, 1])."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def stage_summary(values_s: list[float]) -> dict:
    ms = [1e3 * v for v in values_s]
    return {"median": median(ms), "p90": quantile(ms, 0.9), "mean": sum(ms) / len(ms) if ms else float("nan")}


@dataclass
class Run:
    """Totals of one method over all prompts of one repetition."""

    tokens: int = 0
    total_s: float = 0.0
    decode_s: float = 0.0
    graph_s: float = 0.0  # time inside the draft and verify graph calls
    rounds: int = 0
    committed: int = 0
    lookup_rounds: int = 0  # rounds whose accepted tokens all came from the lookup chain

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def host_share(self) -> float:
        return (self.decode_s - self.graph_s) / self.decode_s if self.decode_s > 0 else 0.0


class _FirstToken:
    """A generate() streamer that notes when the first new token arrives (the end of HF's prefill)."""

    def __init__(self):
        self.calls = 0
        self.first = None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self):
        pass


def hf_generate(model, ids: list[int], max_new_tokens: int, eos: list[int], pad: int | None, lookup: int = 0):
    """Greedy Hugging Face generate() (with ``lookup`` > 0: prompt-lookup decoding proposing that many tokens);
    returns (new tokens, total seconds, seconds to the first new token)."""
    from transformers import GenerationConfig

    dev = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.int64, device=dev)
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                          eos_token_id=list(eos) if eos else None,
                          pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                          **({"prompt_lookup_num_tokens": lookup} if lookup else {}))
    streamer = _FirstToken()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc, streamer=streamer)
    sync()
    t1 = time.perf_counter()
    new = out[0, len(ids):].tolist()
    first = (streamer.first - t0) if streamer.first is not None else (t1 - t0)
    return new, t1 - t0, first


def machine_info(device: torch.device) -> dict:
    info = {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def encode_prompts(engine, prompts, max_new_tokens: int, max_budget: int, log) -> list[list[int]]:
    S, D = engine.decoder.S, engine.decoder.D
    limit = min(S - max_budget, S - max_new_tokens - D - 2)
    if limit < 1:
        raise JetSpecError(f"max_new_tokens {max_new_tokens} and budget {max_budget} leave no room for a prompt in "
                           f"this artifact's max_seq_len {S} (depth {D}); lower --max-new-tokens")
    out = []
    for p in prompts:
        ids = engine.encode(p)
        if not ids:
            raise JetSpecError("a prompt encodes to no tokens")
        if len(ids) > limit:
            log(f"note: a prompt of {len(ids)} tokens is cut to its last {limit} (max_seq_len {S})")
            ids = ids[-limit:]
        out.append(ids)
    return out


@dataclass
class Measurements:
    """Everything one profile run measured, per method and budget, over all repetitions."""

    budgets: list[int]
    ar_runs: list[Run] = field(default_factory=list)
    hf_runs: list[Run] = field(default_factory=list)
    pld_runs: list[Run] = field(default_factory=list)  # HF prompt-lookup decoding
    ar_step_s: list[float] = field(default_factory=list)
    ar_tokens: list[list[int]] = field(default_factory=list)  # first repetition: the reference output
    hf_match_ar: int = 0
    spec_runs: dict = field(default_factory=dict)  # budget -> [Run]
    stage_s: dict = field(default_factory=dict)  # budget -> stage -> per-round seconds
    round_total_s: dict = field(default_factory=dict)  # budget -> per-round seconds
    budget_rounds: dict = field(default_factory=dict)  # budget -> {"4": rounds, ..., "plain": rounds}
    match_ar: dict = field(default_factory=dict)  # budget -> prompts whose output equals ar_step's
    lookup_off: "Measurements | None" = None  # the same budgets with the lookup chain off (artifacts with L > 0)

    def __post_init__(self):
        for b in self.budgets:
            self.spec_runs.setdefault(b, [])
            self.stage_s.setdefault(b, {k: [] for k in STAGES})
            self.round_total_s.setdefault(b, [])
            self.budget_rounds.setdefault(b, {})
            self.match_ar.setdefault(b, 0)

    def with_chain_off(self) -> "Measurements":
        """Measurements for the lookup-off decoders: their own per-budget records, this one's baselines (the
        same ar_step reference output and runs, so their speedups and lossless counts compare alike)."""
        off = Measurements(self.budgets, ar_runs=self.ar_runs, hf_runs=self.hf_runs, pld_runs=self.pld_runs,
                           ar_step_s=self.ar_step_s, ar_tokens=self.ar_tokens)
        self.lookup_off = off
        return off


class Bench:
    """Runs every method on the prompts: the artifact's decoders (one per budget), and the HF model."""

    def __init__(self, base, decoders: dict, eos: list[int], hf_model, pad: int | None, ids: list[list[int]],
                 max_new_tokens: int, log: Callable[[str], None], lookup_off: dict | None = None):
        self.base, self.decoders, self.eos, self.hf_model, self.pad = base, decoders, eos, hf_model, pad
        self.ids, self.n, self.log = ids, max_new_tokens, log
        self.lookup_off = lookup_off or {}  # budget -> the decoder with the lookup chain off (L > 0 only)

    def decode(self, dec, prompt_ids: list[int], n: int, speculative: bool):
        """Greedy decoding of ``prompt_ids`` with decoder ``dec`` (what Engine.generate does for token ids)."""
        from jetspec_compile.decode import Stats

        st = Stats()
        loop = dec.speculative if speculative else dec.autoregressive
        tokens = [t for chunk in loop(prompt_ids, n, eos_token_ids=self.eos, stats=st) for t in chunk]
        return tokens, st

    def warm_up(self) -> None:
        """First calls allocate, load kernels and fill caches: run each method once on a short prompt, untimed."""
        w, n = self.ids[0][-8:], min(8, self.n)
        self.decode(self.base, w, n, False)
        for dec in [*self.decoders.values(), *self.lookup_off.values()]:
            self.decode(dec, w, n, True)
        if self.hf_model is not None:
            hf_generate(self.hf_model, w, n, self.eos, self.pad)
            hf_generate(self.hf_model, w, n, self.eos, self.pad, lookup=HF_LOOKUP)

    def measure(self, reps: int) -> Measurements:
        m = Measurements(sorted(self.decoders))
        off = m.with_chain_off() if self.lookup_off else None
        for r in range(reps):
            tag = f"[rep {r + 1}/{reps}]"
            self._ar_step(m, r, tag)
            if self.hf_model is not None:
                self._hf(m, r, tag)
            for b in m.budgets:
                self._speculative(m, b, r, tag, self.decoders[b])
                if off is not None:
                    self._speculative(off, b, r, tag, self.lookup_off[b], " (lookup off)")
        return m

    def _ar_step(self, m: Measurements, r: int, tag: str) -> None:
        run = Run()
        for p in self.ids:
            toks, st = self.decode(self.base, p, self.n, False)
            if r == 0:
                m.ar_tokens.append(toks)
            run.tokens += st.new_tokens
            run.total_s += st.total_s
            run.decode_s += st.decode_s
            run.graph_s += st.verify_s
            run.rounds += st.rounds
            m.ar_step_s += st.stage_s["verify"]
        m.ar_runs.append(run)
        self.log(f"{tag} ar_step: {run.tokens_per_s:.1f} tok/s")

    def _hf_run(self, m: Measurements, r: int, lookup: int) -> Run:
        run = Run()
        for i, p in enumerate(self.ids):
            toks, total, first = hf_generate(self.hf_model, p, self.n, self.eos, self.pad, lookup=lookup)
            if not lookup and r == 0 and toks == m.ar_tokens[i]:
                m.hf_match_ar += 1
            run.tokens += len(toks)
            run.total_s += total
            run.decode_s += total - first if len(toks) > 1 else total
        return run

    def _hf(self, m: Measurements, r: int, tag: str) -> None:
        m.hf_runs.append(self._hf_run(m, r, 0))
        self.log(f"{tag} HF generate: {m.hf_runs[-1].tokens_per_s:.1f} tok/s")
        m.pld_runs.append(self._hf_run(m, r, HF_LOOKUP))
        self.log(f"{tag} HF prompt lookup ({HF_LOOKUP}): {m.pld_runs[-1].tokens_per_s:.1f} tok/s")

    def _speculative(self, m: Measurements, b: int, r: int, tag: str, dec, label: str = "") -> None:
        run = Run()
        for i, p in enumerate(self.ids):
            toks, st = self.decode(dec, p, self.n, True)
            if r == 0 and toks == m.ar_tokens[i]:
                m.match_ar[b] += 1
            run.tokens += st.new_tokens
            run.total_s += st.total_s
            run.decode_s += st.decode_s
            run.graph_s += st.draft_s + st.verify_s
            run.rounds += st.rounds
            run.committed += sum(st.accepted)
            run.lookup_rounds += st.lookup_rounds
            for k in STAGES:
                m.stage_s[b][k] += st.stage_s[k]
            m.round_total_s[b] += st.round_s
            for key, n in st.budget_rounds.items():
                m.budget_rounds[b][key] = m.budget_rounds[b].get(key, 0) + n
        m.spec_runs[b].append(run)
        tau = run.committed / run.rounds if run.rounds else 0.0
        self.log(f"{tag} budget {b}{label}: {run.tokens_per_s:.1f} tok/s, tau {tau:.2f}, "
                 f"{run.tokens_per_s / max(m.ar_runs[-1].tokens_per_s, 1e-12):.2f}x ar_step")
