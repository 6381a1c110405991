"""Export-time calibration: load the freshly compiled graphs and time one round of each budget."""

from __future__ import annotations

from pathlib import Path

import torch

from jetspec_compile.head import DraftHead
from jetspec_compile.target import Target


def calibrate_costs(folder: Path, report: dict, be, device: str, weights: dict, specs: dict, main: int,
                    depths: dict[int, int], target: Target, head: DraftHead) -> dict[str, float]:
    """Load the compiled graphs and time one round of each budget (draft + verify) and one ar_step, in ms."""
    from jetspec_compile.adaptive import Arm
    from jetspec_compile.decode import CacheDims, Decoder

    graphs = {name: be.load_graph(folder / info["file"], device, weights, graph=name) for name, info in report.items()}
    spec = specs[main]
    dims = CacheDims.from_models(target, head, depths[main])
    arms = [Arm(b, depths[b], 0.0) for b in specs]
    dec = Decoder(graphs, budget=main, topk=spec.topk, max_seq_len=spec.max_seq_len,
                  prefill_chunk=spec.prefill_chunk, dims=dims, device=device, lookup=spec.lookup, arms=arms)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runtime is measured; two OpenMP threads spike 5-10x on small CPUs
    try:
        return {k: round(v * 1e3, 4) for k, v in dec.calibrate().items()}
    finally:
        torch.set_num_threads(threads)
