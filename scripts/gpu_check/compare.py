"""Compiled-vs-eager comparison of one graph's outputs (with the near-tie rule) and latency timing."""

from __future__ import annotations

import statistics
import time


def rel_diff(a, b) -> dict:
    a, b = a.float(), b.float()
    d = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return dict(max_abs=d, rel=d / scale if scale > 0 else d)


def near_tie_tol(top1_abs: float, dtype: str) -> float:
    """A logit gap this small can flip between two correct implementations (2 bf16 ulps at the top logit)."""
    return (2 * 2.0**-7 * top1_abs + 1e-3) if dtype != "float32" else (1e-4 * top1_abs + 1e-5)


def verify_path_margin(verify_module, args) -> tuple[float, float]:
    """(smallest top-1 / top-2 logit gap, largest |top-1 logit|) of the eager target over the nodes of the eager
    accepted path, root included: where compiled and eager acceptance can first disagree."""
    import torch

    from jetspec_compile.accept import accept, greedy_tokens

    tokens, parents, depth, mask, cache_len, kc, vc = args
    with torch.inference_mode():
        logits, _, _ = verify_module._forward_tree(tokens, depth, mask, cache_len, kc, vc)
        acc = accept(tokens, parents, depth, mask, greedy_tokens(logits), verify_module.depth)
        nodes = acc.path[: int(acc.length.reshape(-1)[0]) + 1]
        top2 = torch.topk(logits.float().index_select(0, nodes), 2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min()), float(top2[:, 0].abs().max())


def compare_outputs(name: str, got, ref, dtype: str, margin: tuple[float, float] | None = None) -> dict:
    """compiled-vs-eager comparison of one graph's outputs; `ok` is the pass criterion.

    A token difference counts as a near-tie flip (ok, flagged `near_tie`) only when the eager target's own
    top-1 / top-2 gap where it happened is within `near_tie_tol`; K/V rows must then still be close."""
    import torch

    tol = 5e-2 if dtype != "float32" else 1e-3
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    r: dict = {"graph": name}
    if name == "verify":
        r["tokens_equal"] = bool(torch.equal(got[0].cpu(), ref[0].cpu()))
        r["length_equal"] = bool(torch.equal(got[1].cpu(), ref[1].cpu()))
        r["accepted_compiled"] = int(got[1].reshape(-1)[0])
        r["accepted_eager"] = int(ref[1].reshape(-1)[0])
        rows = {k: rel_diff(g, e) for k, g, e in zip(("k_rows", "v_rows", "ctx_k", "ctx_v"), got[2:], ref[2:])}
        r["rows"] = rows
        r["rows_rel_max"] = max(v["rel"] for v in rows.values())
        same = r["tokens_equal"] and r["length_equal"]
        if margin is not None:
            r["path_margin"], r["path_top1"] = margin
        r["near_tie"] = (not same and margin is not None and margin[0] <= near_tie_tol(margin[1], dtype))
        # different accepted paths commit different rows: rows are compared only when the paths agree
        r["ok"] = (same and r["rows_rel_max"] <= tol) or r["near_tie"]
    elif name == "ar_step":
        r["token_equal"] = bool(torch.equal(got[0].cpu(), ref[0].cpu()))
        lg = rel_diff(got[1], ref[1])
        r["logits_max_abs"], r["logits_rel"] = lg["max_abs"], lg["rel"]
        top2 = torch.topk(ref[1].float(), 2).values
        r["eager_top2_margin"] = float(top2[0] - top2[1])
        rows = {k: rel_diff(g, e) for k, g, e in zip(("k_rows", "v_rows"), got[2:], ref[2:])}
        r["rows"] = rows
        r["rows_rel_max"] = max(v["rel"] for v in rows.values())
        r["near_tie"] = not r["token_equal"] and r["eager_top2_margin"] <= near_tie_tol(float(top2[0].abs()), dtype)
        r["ok"] = (r["token_equal"] or r["near_tie"]) and r["rows_rel_max"] <= tol
    elif name == "prefill":
        rows = {k: rel_diff(g, e) for k, g, e in zip(("k_rows", "v_rows", "ctx_k", "ctx_v"), got, ref)}
        r["rows"] = rows
        r["rows_rel_max"] = max(v["rel"] for v in rows.values())
        r["ok"] = r["rows_rel_max"] <= tol
    elif name == "draft":
        same = [bool(torch.equal(g.cpu(), e.cpu())) for g, e in zip(got[:4], ref[:4])]
        r["tree_equal"] = all(same)
        r["nodes_differ"] = int((got[0].cpu() != ref[0].cpu()).sum())
        r["score_max_abs"] = rel_diff(got[4], ref[4])["max_abs"]
        # bf16 top-k near-ties may swap candidates; the cumulative scores still agree then
        r["ok"] = r["tree_equal"] or r["score_max_abs"] <= (0.1 if dtype != "float32" else 1e-3)
    else:
        raise ValueError(name)
    return r


def time_call(fn, args, device: str, warmup: int, reps: int) -> float:
    """Median milliseconds of one call (CUDA events on the current stream; perf_counter on the CPU)."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        samples = []
        if device == "cuda":
            torch.cuda.synchronize()
            for _ in range(reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(*args)
                e.record()
                e.synchronize()
                samples.append(s.elapsed_time(e))
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn(*args)
                samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def eager_call(module):
    import torch

    def call(*args):
        with torch.inference_mode():
            return module(*args)

    return call
