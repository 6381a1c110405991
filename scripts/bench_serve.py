"""Load benchmark of `jetspec-compile serve`: requests/s, tokens/s, time to first token and per-token latency
(p50 / p99) at several client concurrencies, speculative vs --ar, plus a burst of simultaneous requests
(how many completed, how many got the documented 503, anything else).

    flock /tmp/jetspec-heavy.lock python scripts/bench_serve.py artifacts/demo --replicas 2 \\
        --concurrency 1,2,4 --requests 12 --max-tokens 64 --burst 100 --out runs/bench_serve

Each mode starts its own server (the real CLI, in a subprocess on 127.0.0.1 and a free port) and stops it.
Prompts: the first --prompt-chars characters of the demo's held-out stdlib files, streamed with the
official `openai` client (stream_options.include_usage gives the token counts). TTFT is measured from
sending the request to the first non-empty text chunk (queueing included); per-token latency is
(last chunk - first chunk) / (completion tokens - 1) per request. Writes bench_serve.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifact")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--concurrency", default="1,2,4")
    p.add_argument("--requests", type=int, default=12, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-chars", type=int, default=400)
    p.add_argument("--burst", type=int, default=100, help="simultaneous requests of the burst test (0: skip)")
    p.add_argument("--burst-queue", type=int, default=100, help="--max-queue of the burst test's server")
    p.add_argument("--modes", default="speculative,ar")
    p.add_argument("--out", default="runs/bench_serve")
    args = p.parse_args()
    prompts = demo_prompts(args.prompt_chars)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, bursts, checks = [], [], []
    for mode in args.modes.split(","):
        extra = ["--ar"] if mode == "ar" else []
        with Server(args.artifact, args.replicas, 4 * max(levels), extra) as srv:
            checks.append(check_equality(srv.url, args.artifact, prompts[:4], args.max_tokens, mode))
            print(json.dumps(checks[-1]), flush=True)
            for c in levels:
                rows.append({"mode": mode, "concurrency": c,
                             **asyncio.run(level(srv.url, prompts, c, args.requests, args.max_tokens))})
                print(json.dumps(rows[-1]), flush=True)
        if args.burst and mode == "speculative":
            for queue in sorted({args.burst_queue, 16}):
                with Server(args.artifact, args.replicas, queue, extra) as srv:
                    bursts.append({"mode": mode, "replicas": args.replicas, "max_queue": queue,
                                   **asyncio.run(burst(srv.url, prompts, args.burst, args.max_tokens))})
                    print(json.dumps(bursts[-1]), flush=True)
    write(Path(args.out), rows, bursts, checks, args)
    return 0


def check_equality(url: str, artifact: str, prompts: list[str], max_tokens: int, mode: str) -> dict:
    """Streamed text from the server (official openai client) == Engine.generate in this process."""
    import openai
    import torch

    from jetspec_compile.runtime import load

    torch.set_num_threads(1)
    engine = load(artifact)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=600, max_retries=0)
    same = 0
    for prompt in prompts:
        want = engine.generate(prompt, max_tokens, speculative=mode != "ar").text
        stream = client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, stream=True)
        same += "".join(c.choices[0].text for c in stream if c.choices) == want
    return {"mode": mode, "prompts": len(prompts), "streamed_equal_to_generate": same}


def demo_prompts(chars: int) -> list[str]:
    from jetspec_compile.demo_paths import demo_heldout_files

    texts = [f.read_text(encoding="utf-8", errors="replace")[:chars] for f in demo_heldout_files()]
    return [t for t in texts if len(t) == chars][:32]


class Server:
    """`jetspec-compile serve` in a subprocess on a free loopback port."""

    def __init__(self, artifact: str, replicas: int, max_queue: int, extra: list[str]):
        self.cmd = [sys.executable, "-m", "jetspec_compile.cli", "serve", artifact, "--port", "0", "--model-name",
                    "bench", "--replicas", str(replicas), "--max-queue", str(max_queue), *extra]

    def __enter__(self) -> "Server":
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        for line in self.proc.stderr:
            if line.startswith("serving"):
                self.url = line.split(" on ")[1].split("/v1")[0]
                return self
            if time.monotonic() > deadline:
                break
        self.proc.kill()
        raise SystemExit(f"the server did not start: {' '.join(self.cmd)}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(url: str, prompt: str, max_tokens: int, client=None) -> dict:
    import openai

    if client is None:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=600, max_retries=0) as own:
            return await one_request(url, prompt, max_tokens, own)
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        stream = await client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, stream=True,
                                                 stream_options={"include_usage": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                first = first if first is not None else now
                last = now
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    except openai.APIStatusError as e:
        return {"status": e.status_code}
    except openai.APIError as e:  # connection problems: counted as lost
        return {"status": type(e).__name__}
    end = time.perf_counter()
    per_token = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return {"status": 200, "ttft": (first or end) - t0, "per_token": per_token, "tokens": tokens, "end": end}


async def level(url: str, prompts: list[str], concurrency: int, n: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=600, max_retries=0)
    todo = list(range(n))
    results: list[dict] = []

    async def worker():
        while todo:
            i = todo.pop(0)
            results.append(await one_request(url, prompts[i % len(prompts)], max_tokens, client))

    t0 = time.perf_counter()
    async with client:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    ttft = [r["ttft"] for r in ok]
    per = [r["per_token"] for r in ok if r["per_token"] is not None]
    return {"requests": len(results), "ok": len(ok), "wall_s": round(wall, 2),
            "req_per_s": round(len(ok) / wall, 2), "tok_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
            "ttft_p50_ms": ms(pct(ttft, 50)), "ttft_p99_ms": ms(pct(ttft, 99)),
            "per_token_p50_ms": ms(pct(per, 50)), "per_token_p99_ms": ms(pct(per, 99))}


async def burst(url: str, prompts: list[str], n: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=600, max_retries=0)
    t0 = time.perf_counter()
    async with client:
        results = await asyncio.gather(*(one_request(url, prompts[i % len(prompts)], max_tokens, client)
                                         for i in range(n)))
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"sent": n, "statuses": statuses, "wall_s": round(time.perf_counter() - t0, 2)}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if len(s) > 1 else s[0]


def ms(v: float | None) -> float | None:
    return None if v is None else round(1e3 * v, 1)


def write(out: Path, rows: list[dict], bursts: list[dict], checks: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.json").write_text(json.dumps({"args": vars(args), "levels": rows, "bursts": bursts,
                                                      "equality": checks}, indent=1))
    lines = ["| mode | clients | req/s | tok/s | TTFT p50 / p99 ms | per-token p50 / p99 ms |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['req_per_s']} | {r['tok_per_s']} | "
                     f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['per_token_p50_ms']} / {r['per_token_p99_ms']} |")
    for b in bursts:
        lines.append(f"\nburst ({b['mode']}, {b['replicas']} replicas, max-queue {b['max_queue']}): {b['sent']} sent,"
                     f" statuses {b['statuses']}, {b['wall_s']} s")
    (out / "bench_serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
