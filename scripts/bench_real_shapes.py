#!/usr/bin/env python
"""Real Qwen3 shapes on the CPU: export a synthetic (seeded random-weight) target + paper-proportioned head
with aoti, every budget in ONE artifact (one weights file), then in one process (one torch thread):

- export wall time and peak resident memory of the exporting process (``/usr/bin/time -v``), artifact size;
- median latency of ar_step, draft(B) and verify(B) for every compiled budget, over a cache of --cache-len rows;
- the round's host share: a short greedy decode per budget, (wall - draft - verify) / wall of its rounds;
- checks: compiled == eager (each budget's draft tree and verify output from the same state, ar_step logits,
  and a short eager decode == the compiled one), and greedy speculative == ar_step on a short generation at
  every budget;
- break-even tau = (draft + verify + host per round) / ar_step, and the speedup PROJECTED at the paper's
  published HumanEval tau (B=16 5.32, B=32 5.35, B=64 5.52): tau / break-even tau. A projection from
  published tau, not a measurement: the weights are random, so tau is not measured here.

    flock /tmp/jetspec-heavy.lock python scripts/bench_real_shapes.py --synthetic qwen3-0.6b \\
        --budget 16 --budgets 4,8,32,64 --out runs/real-shapes

``--artifact DIR --export-log FILE`` reuses an artifact exported earlier (FILE: the ``/usr/bin/time -v``
output of that export). Writes <out>/real_shapes.json and <out>/real_shapes.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PAPER_TAU = {16: 5.32, 32: 5.35, 64: 5.52, 128: 6.39}   # JetSpec paper, HumanEval
CLI = "import sys; from jetspec_compile.cli import main; sys.exit(main())"


def parse_time_v(text: str) -> dict:
    """Wall seconds and peak RSS bytes from GNU time -v output."""
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_bytes"] = int(m.group(1)) * 1024
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["wall_s"] = secs
    m = re.search(r"Exit status: (\d+)", text)
    if m:
        out["exit_status"] = int(m.group(1))
    return out


def weights_file_bytes(folder: Path) -> int:
    """Bytes of tensor data in the artifact's weights.safetensors (header excluded)."""
    with open(folder / "weights.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def export(args, art: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CLI, "export", "--synthetic", args.synthetic,
           "--budget", str(args.budget), "--topk", str(args.topk), "--max-seq-len", str(args.max_seq_len),
           "--prefill-chunk", str(args.prefill_chunk), "--no-sampling", "--out", str(art), "--force"]
    if args.budgets:
        cmd += ["--budgets", args.budgets]
    if args.lookup:
        cmd += ["--lookup", str(args.lookup)]
    print("$ jetspec-compile " + " ".join(cmd[5:]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    p = subprocess.run(cmd, env=env, stdout=None, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(p.stderr[-4000:])
    if p.returncode:
        raise SystemExit(f"error: the export failed (exit {p.returncode})")
    return parse_time_v(p.stderr)


def host_share(st) -> dict:
    """Per-round means (ms) of a decode's stages and the share of its rounds' wall time outside the graphs."""
    n = max(1, st.rounds)
    draft, verify = sum(st.stage_s["draft"]), sum(st.stage_s["verify"])
    host = sum(st.stage_s["host"]) + sum(st.stage_s["commit"])
    wall = st.total_s - st.prefill_s                     # includes the loop's own bookkeeping between rounds
    outside = max(0.0, wall - draft - verify)
    return {"rounds": st.rounds, "tau": st.tau, "draft_ms": 1e3 * draft / n, "verify_ms": 1e3 * verify / n,
            "host_commit_ms": 1e3 * host / n, "outside_graphs_ms": 1e3 * outside / n,
            "round_ms": 1e3 * wall / n, "host_share": outside / wall if wall else 0.0}


def max_abs(a, b) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", default="qwen3-0.6b")
    ap.add_argument("--budget", type=int, default=16, help="the artifact's own budget")
    ap.add_argument("--budgets", default="4,8,32,64", help="more budgets compiled into the same artifact")
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--lookup", type=int, default=0, help="a prompt-lookup chain of L tokens (with --budgets: "
                    "the chain alone, verify.chain, is timed too)")
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--prefill-chunk", type=int, default=128)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--gen-tokens", type=int, default=16, help="tokens of each short greedy generation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--artifact", default=None, help="reuse this artifact (skip the export)")
    ap.add_argument("--export-log", default=None, help="with --artifact: the /usr/bin/time -v output of its export")
    ap.add_argument("--no-eager", action="store_true", help="skip the compiled == eager check (saves memory)")
    ap.add_argument("--out", default="runs/real-shapes")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from jetspec_compile.runtime import load

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.artifact:
        art = Path(args.artifact)
        exp = parse_time_v(Path(args.export_log).read_text(errors="replace")) if args.export_log else {}
    else:
        art = out / f"{args.synthetic}-b{args.budget}"
        exp = export(args, art)
    eng = load(str(art))
    res = _summary(args, eng, art, exp)
    st = _State(eng, args.cache_len)
    lat, ar = _latencies(st, args.iters, res)
    _host_and_lossless(st, eng, lat, ar, args.gen_tokens, res)
    (out / "real_shapes.json").write_text(json.dumps(res, indent=2, default=str))
    if not args.no_eager:
        res["checks"]["compiled_equals_eager"] = _compiled_vs_eager(st, eng, art, args)
    (out / "real_shapes.json").write_text(json.dumps(res, indent=2, default=str))
    md = render_md(res)
    (out / "real_shapes.md").write_text(md)
    print(md)
    return 0


def _summary(args, eng, art: Path, exp: dict) -> dict:
    man = eng.artifact  # the typed Manifest
    wbytes = weights_file_bytes(art)
    res = {"synthetic": man.sources.get("synthetic", args.synthetic), "threads": args.threads,
           "cache_len": args.cache_len, "max_seq_len": man.shapes.max_seq_len, "topk": man.shapes.topk,
           "weight_bytes": wbytes, "artifact_bytes": dir_bytes(art), "export": exp,
           "graphs": len(man.graphs), "budgets": {}, "checks": {}}
    if "peak_rss_bytes" in exp:
        res["export"]["peak_over_weights"] = exp["peak_rss_bytes"] / wbytes
    print(f"artifact {art}: {len(man.graphs)} graphs, weights {wbytes / 1e9:.2f} GB, "
          f"export {exp.get('wall_s', float('nan')):.0f} s, peak {exp.get('peak_rss_bytes', 0) / 1e9:.2f} GB", flush=True)
    return res


class _State:
    """One decoder state every measurement starts from: a random prompt of ``cache_len`` tokens prefilled."""

    def __init__(self, eng, cache_len: int):
        import torch
        from jetspec_compile.decode import _Lookup

        dec = self.dec = eng.decoder
        V = int(eng.artifact.target.config["vocab_size"])
        gen = torch.Generator().manual_seed(0)
        self.prompt = torch.randint(3, min(1000, V - 2), (cache_len + 1,), generator=gen).tolist()
        self.cl = dec._cache_len(dec.prefill(self.prompt))
        self.anchor = torch.tensor([self.prompt[-1]])
        self.spec_budgets = [b for b in dec.budgets if b != 1]
        # artifacts with a prompt-lookup chain: the chain proposed from the prompt
        self.lookup = _Lookup(self.prompt, dec.L, dec.device) if dec.L else None

    def draft(self, d, arm):
        if self.lookup:
            self.lookup.propose()
        return d._draft(arm, self.anchor, self.cl, self.lookup)[0]  # (tokens, parents, depth, mask)


def _latencies(st: _State, iters: int, res: dict) -> tuple[dict, dict]:
    """Each graph timed in isolation from the same state: ar_step, each budget's draft and verify, the plain step."""
    from bench_graphs import timed
    from jetspec_compile.adaptive import CHAIN

    dec, cl, anchor = st.dec, st.cl, st.anchor
    gc.collect()
    gc.disable()
    ar = timed(lambda: dec.graphs["ar_step"](anchor, cl, dec.k_cache, dec.v_cache), iters)
    lat = {}
    for b in st.spec_budgets:
        arm = dec._arm_graphs(b)
        tree = st.draft(dec, arm)
        lat[b] = {"depth": arm.depth,
                  "draft": timed(lambda: st.draft(dec, arm), iters),
                  "verify": timed(lambda: arm.verify(*tree, cl, dec.k_cache, dec.v_cache), iters)}
        print(f"B={b}: draft {lat[b]['draft']['median_ms']:.1f} ms, verify {lat[b]['verify']['median_ms']:.1f} ms, "
              f"ar_step {ar['median_ms']:.1f} ms", flush=True)
    if 1 in dec.budgets:
        plain = dec._arm_graphs(1)
        root = dec._plain_tree(anchor)
        res["plain_verify_b1"] = timed(lambda: plain.verify(*root, cl, dec.k_cache, dec.v_cache), iters)
    if dec.has_chain_arm:  # the lookup chain alone: 1 + L verify rows, no draft
        chain = dec._arm_graphs(CHAIN)
        tree = st.draft(dec, chain)
        res["chain_verify"] = timed(lambda: chain.verify(*tree, cl, dec.k_cache, dec.v_cache), iters)
        res["chain_verify"]["rows"] = chain.nodes
        print(f"chain alone ({chain.nodes} rows): verify {res['chain_verify']['median_ms']:.1f} ms", flush=True)
    gc.enable()
    res["ar_step"] = ar
    return lat, ar


def _host_and_lossless(st: _State, eng, lat: dict, ar: dict, gen_tokens: int, res: dict) -> None:
    """Per budget: the host share of a real decode, break-even and projected tau, greedy == ar_step."""
    short = st.prompt[:64]
    ref = eng.generate(short, gen_tokens, speculative=False)
    res["checks"]["ar_tokens"] = ref.tokens
    lossless = {}
    a = ar["median_ms"]
    for b in st.spec_budgets:
        r = eng.generate(short, gen_tokens, budget=b)
        lossless[b] = r.tokens == ref.tokens
        hs = host_share(r.stats)
        d, v = lat[b]["draft"]["median_ms"], lat[b]["verify"]["median_ms"]
        row = dict(lat[b], host=hs, verify_over_ar=v / a, draft_over_ar=d / a,
                   host_over_ar=hs["outside_graphs_ms"] / a,
                   break_even_tau=(d + v + hs["outside_graphs_ms"]) / a, greedy_equals_ar_step=lossless[b])
        if b in PAPER_TAU:
            row["paper_tau"] = PAPER_TAU[b]
            row["projected_speedup"] = PAPER_TAU[b] / row["break_even_tau"]
        res["budgets"][b] = row
        print(f"B={b}: host share {hs['host_share']:.4f} ({hs['outside_graphs_ms']:.2f} ms/round), "
              f"break-even tau {row['break_even_tau']:.2f}, greedy == ar_step: {lossless[b]}", flush=True)
    full = max(st.spec_budgets, key=lambda b: lat[b]["depth"])  # the deepest draft (D = 15 at B = 64, K = 4)
    res["full_depth_draft"] = {"budget": full, "depth": lat[full]["depth"],
                               "draft_ms": lat[full]["draft"]["median_ms"]}
    for b, row in res["budgets"].items():
        if "paper_tau" in row:
            be = (res["full_depth_draft"]["draft_ms"] + lat[b]["verify"]["median_ms"]
                  + row["host"]["outside_graphs_ms"]) / a
            row["break_even_tau_full_depth_draft"] = be
            row["projected_speedup_full_depth_draft"] = row["paper_tau"] / be
    res["checks"]["greedy_speculative_equals_ar_step"] = {str(b): ok for b, ok in lossless.items()}


def _compiled_vs_eager(st: _State, eng, art: Path, args) -> dict:
    """The compiled graphs against the eager ones from the same state, and a short decode of both."""
    import torch
    from jetspec_compile.adaptive import CHAIN
    from jetspec_compile.runtime import load

    t0 = time.perf_counter()
    eager = load(str(art), mode="eager")
    dec, eg, cl, anchor = st.dec, eager.decoder, st.cl, st.anchor
    ce = {"load_s": time.perf_counter() - t0, "graphs": {}}
    with torch.no_grad():
        c_ar = dec.graphs["ar_step"](anchor, cl, dec.k_cache, dec.v_cache)
        e_ar = eg.graphs["ar_step"](anchor, cl, dec.k_cache, dec.v_cache)
        ce["graphs"]["ar_step"] = {"token_equal": bool(torch.equal(c_ar[0], e_ar[0])),
                                   "logits_max_abs": max_abs(c_ar[1], e_ar[1]),
                                   "kv_max_abs": max(max_abs(c_ar[2], e_ar[2]), max_abs(c_ar[3], e_ar[3]))}
        for b in st.spec_budgets + ([CHAIN] if dec.has_chain_arm else []):
            name = "chain" if b == CHAIN else f"B={b}"
            ce["graphs"][name] = _compare_round(st, dec._arm_graphs(b), eg._arm_graphs(b))
    short = st.prompt[:64]
    rounds = {}
    for b in (args.budget,):
        c = eng.generate(short, args.gen_tokens // 2, budget=b)
        e = eager.generate(short, args.gen_tokens // 2, budget=b)
        rounds[str(b)] = {"tokens_equal": c.tokens == e.tokens, "accepted_equal": c.stats.accepted == e.stats.accepted,
                          "rounds": c.stats.rounds}
    ce["decode"] = rounds
    ce["all_equal"] = (all(v.get("tree_equal", True) and v.get("verify_tokens_equal", True)
                           and v.get("token_equal", True) for v in ce["graphs"].values())
                       and all(r["tokens_equal"] and r["accepted_equal"] for r in rounds.values()))
    print(f"compiled == eager: {ce['all_equal']} ({json.dumps(ce['graphs'])}; decode {rounds})", flush=True)
    del eager, eg
    gc.collect()
    return ce


def _compare_round(st: _State, ca, ea) -> dict:
    """One budget's compiled and eager draft, then the same tree into both verifies (compiled caches)."""
    import torch

    dec, cl = st.dec, st.cl
    ct, et = st.draft(dec, ca), st.draft(dec, ea)  # eager graphs on the compiled decoder's caches
    cv = ca.verify(*ct, cl, dec.k_cache, dec.v_cache)
    ev = ea.verify(*ct, cl, dec.k_cache, dec.v_cache)
    n = int(cv[1].reshape(-1)[0]) + 1
    return {"tree_equal": all(torch.equal(x, y) for x, y in zip(ct, et)),
            # the a+1 committed tokens and a (the eager graphs draft the head's whole block, so their padded
            # outputs are longer: D+1 = 16 rows; only the committed prefix is compared)
            "verify_tokens_equal": bool(torch.equal(cv[1], ev[1]) and torch.equal(cv[0][:n], ev[0][:n])),
            "committed": n,
            "verify_rows_max_abs": max(max_abs(cv[i][:, :, :n], ev[i][:, :, :n]) for i in (2, 3, 4, 5))}


def render_md(res: dict) -> str:
    exp = res["export"]
    a = res["ar_step"]["median_ms"]
    lines = [f"Synthetic {res['synthetic']} (random weights), aoti, fp32, K={res['topk']}, S={res['max_seq_len']}, "
             f"{res['threads']} torch thread, cache {res['cache_len']} rows; one artifact with {res['graphs']} graphs.",
             "",
             f"- weights {res['weight_bytes'] / 1e9:.2f} GB, artifact {res['artifact_bytes'] / 1e9:.2f} GB",
             f"- export {exp.get('wall_s', float('nan')):.0f} s wall, peak RSS of the exporting process "
             f"{exp.get('peak_rss_bytes', 0) / 1e9:.2f} GB = {exp.get('peak_over_weights', float('nan')):.2f}x weights",
             f"- ar_step {a:.1f} ms" + (f", plain step (verify at B=1) {res['plain_verify_b1']['median_ms']:.1f} ms"
                                         if "plain_verify_b1" in res else "")
             + (f", the lookup chain alone (verify.chain, {res['chain_verify']['rows']} rows) "
                f"{res['chain_verify']['median_ms']:.1f} ms = {res['chain_verify']['median_ms'] / a:.2f}x ar_step"
                if "chain_verify" in res else ""),
             "",
             "| B | D | draft ms | verify ms | verify/ar_step | draft/ar_step | host/round ms (share) | "
             "break-even tau | paper tau | projected speedup (projection, not measured) | "
             "projected, draft at D=15 | greedy == ar_step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b, r in res["budgets"].items():
        h = r["host"]
        pt = r.get("paper_tau")
        proj = f"{r['projected_speedup']:.2f}x" if pt else "-"
        proj15 = f"{r['projected_speedup_full_depth_draft']:.2f}x" if pt else "-"
        lines.append(
            f"| {b} | {r['depth']} | {r['draft']['median_ms']:.1f} | {r['verify']['median_ms']:.1f} | "
            f"{r['verify_over_ar']:.2f} | {r['draft_over_ar']:.2f} | {h['outside_graphs_ms']:.2f} "
            f"({100 * h['host_share']:.2f} %) | {r['break_even_tau']:.2f} | {pt if pt else 'none published'} | "
            f"{proj} | {proj15} | "
            f"{'yes' if r['greedy_equals_ar_step'] else 'NO'} |")
    ce = res["checks"].get("compiled_equals_eager")
    if ce:
        lines += ["", f"compiled == eager: {'yes' if ce['all_equal'] else 'NO'} "
                      f"(ar_step logits max abs diff {ce['graphs']['ar_step']['logits_max_abs']:.2e}; "
                      f"each budget's draft tree and verify output from the same state; "
                      f"decode at B={', '.join(ce['decode'])}: {json.dumps(ce['decode'])})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
