#!/usr/bin/env python
"""Usage: python scripts/check_calibrate_caches.py ARTIFACT OUT.json (an artifact with several budgets).

Round costs with torch.zeros caches vs the decoder's lazily mapped ones (decode.zero_cache), on one loaded
artifact, alternated A B A B (Decoder.calibrate, reps 5 each, one thread)."""
import json
import sys

import torch
torch.set_num_threads(1)
from jetspec_compile.runtime import load
from jetspec_compile.decode import zero_cache
eng = load(sys.argv[1])
dec = eng.decoder
own = {n: torch.zeros_like(getattr(dec, n)) for n in ("k_cache", "v_cache", "ctx_k", "ctx_v")}
lazy = {}
for n, t in own.items():
    c = zero_cache(tuple(t.shape), t.dtype, t.device); c[:, :, :256].zero_(); lazy[n] = c
res = []
for label in ("zeros", "lazy", "zeros", "lazy"):
    for n in own:
        setattr(dec, n, (own if label == "zeros" else lazy)[n])
    c = dec.calibrate(5, 256)
    res.append({"caches": label, "cost_ms": {k: round(v * 1e3, 1) for k, v in c.items()}})
    print(res[-1], flush=True)
json.dump(res, open(sys.argv[2], "w"), indent=1)
