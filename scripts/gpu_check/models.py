"""The kit's models and inputs: a Qwen3-8B-shaped target cut to a few layers + a matching 1-layer head
(tiny in a dry run), and random committed caches with an oracle tree whose first path is the target's own
greedy continuation."""

from __future__ import annotations

from .common import Ctx


def model_dims(ctx: Ctx) -> dict:
    o = ctx.opts
    if ctx.dry_run:
        d = dict(name="tiny (dry run)", vocab_size=256, hidden_size=64, intermediate_size=128, heads=4,
                 kv_heads=2, head_dim=16, layers=2, block_size=6, topk=3, seq_len=96, prefill=16,
                 budgets=[4, 8], dtype="float32", committed=40)
    else:
        d = dict(name="Qwen3-8B-shaped", vocab_size=151936, hidden_size=4096, intermediate_size=12288, heads=32,
                 kv_heads=8, head_dim=128, layers=2, block_size=16, topk=7, seq_len=2048, prefill=128,
                 budgets=[16, 64, 256], dtype="bfloat16", committed=1024)
    if o.get("layers"):
        d["layers"] = int(o["layers"])
    if o.get("seq_len"):
        d["seq_len"] = int(o["seq_len"])
    if o.get("budgets"):
        d["budgets"] = [int(b) for b in o["budgets"]]
    d["committed"] = min(d["committed"], d["seq_len"] - max(d["budgets"]) - d["block_size"] - 2)
    d["taps"] = [min(d["layers"] - 1, int(round(i * (d["layers"] - 1) / 4))) for i in range(5)]
    d["seed"] = int(o.get("seed") or 0)
    return d


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_models(dims: dict, device: str):
    """Random-weight target (HF Qwen3ForCausalLM, built directly on `device`) and head, in dims["dtype"]."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from jetspec_compile.target import load_target
    from jetspec_compile.tiny import tiny_head

    dtype = torch_dtype(dims["dtype"])
    cfg = Qwen3Config(
        vocab_size=dims["vocab_size"], hidden_size=dims["hidden_size"], intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
        head_dim=dims["head_dim"], max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa",
        initializer_range=0.02 if dims["hidden_size"] > 256 else 0.2,  # tiny: larger, so greedy is not degenerate
    )
    torch.manual_seed(dims["seed"])
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    model = model.to(dtype).eval()
    target = load_target(model, tap_layers=dims["taps"], dtype=dtype, device=device)
    std = 0.02 if dims["hidden_size"] > 256 else 0.2
    head = tiny_head(target, num_layers=1, block_size=dims["block_size"], std=std, seed=dims["seed"])
    head = head.to(device=device, dtype=dtype).eval()
    return target, head


def spec_for(dims: dict, budget: int):
    from jetspec_compile.graphs import SpecConfig

    return SpecConfig(budget=int(budget), topk=dims["topk"], max_seq_len=dims["seq_len"],
                      prefill_chunk=dims["prefill"])


def package_name(graph: str, budget: int) -> str:
    return f"{graph}_b{budget}.pt2"


def compile_plan(dims: dict) -> list[tuple[str, int]]:
    return [("verify", b) for b in dims["budgets"]] + [("ar_step", dims["budgets"][0])]


class State:
    """Random committed caches of length L, a prompt chunk, an anchor, and an oracle tree whose first
    path is the target's own greedy continuation (so acceptance goes deep)."""

    def __init__(self, target, head, dims: dict, device: str):
        import torch

        self.device = device
        self.dtype = target.dtype
        self.L = int(dims["committed"])
        S, P = dims["seq_len"], dims["prefill"]
        g = torch.Generator().manual_seed(1234 + dims["seed"])

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(device=device, dtype=self.dtype)

        nl, hkv, hd = target.num_layers, target.num_kv_heads, target.head_dim
        self.k_cache, self.v_cache = rnd(nl, hkv, S, hd), rnd(nl, hkv, S, hd)
        self.ctx_k = rnd(len(head.layers), head.num_kv_heads, S, head.head_dim)
        self.ctx_v = rnd(len(head.layers), head.num_kv_heads, S, head.head_dim)
        i64 = dict(dtype=torch.int64, device=device)
        V = target.vocab_size
        self.prompt_chunk = torch.randint(0, V - 1, (P,), generator=g).to(device)
        self.prefill_len = torch.tensor([max(0, self.L - P)], **i64)
        self.anchor = torch.randint(0, V - 1, (1,), generator=g).to(device)
        self.cache_len = torch.tensor([self.L], **i64)
        self.gen = g
        self.chain: list[int] | None = None

    def greedy_chain(self, ar_step, n: int) -> list[int]:
        """n greedy tokens after the anchor from the eager ar_step graph (rows written into cache copies)."""
        import torch

        kc, vc = self.k_cache.clone(), self.v_cache.clone()
        tok = self.anchor.clone()
        out = []
        with torch.inference_mode():
            for i in range(n):
                cl = torch.tensor([self.L + i], dtype=torch.int64, device=self.device)
                nxt, _, k, v = ar_step(tok, cl, kc, vc)
                kc[:, :, self.L + i] = k[:, :, 0]
                vc[:, :, self.L + i] = v[:, :, 0]
                tok = nxt.reshape(1)
                out.append(int(tok[0]))
        self.chain = out
        return out

    def tree(self, depth: int, topk: int, budget: int, vocab: int):
        """A best-first tree whose rank-0 candidates are the greedy chain (other ranks random, distinct)."""
        import torch

        from jetspec_compile.tree import build_tree

        toks = torch.zeros(depth, topk, dtype=torch.int64)
        for d in range(depth):
            true = self.chain[d] if self.chain and d < len(self.chain) else 0
            perm = torch.randperm(vocab - 1, generator=self.gen)
            perm = perm[perm != true][:topk]
            perm[0] = true
            toks[d] = perm
        lps = torch.full((depth, topk), -3.0) - torch.arange(topk).float()
        lps[:, 0] = -0.01
        dev = self.device
        return build_tree(self.anchor, toks.to(dev), lps.to(dev), budget)

    def args(self, name: str, tree=None) -> tuple:
        if name == "prefill":
            return (self.prompt_chunk, self.prefill_len, self.k_cache, self.v_cache)
        if name == "draft":
            return (self.anchor, self.cache_len, self.ctx_k, self.ctx_v)
        if name == "ar_step":
            return (self.anchor, self.cache_len, self.k_cache, self.v_cache)
        if name == "verify":
            return (tree.tokens, tree.parents, tree.depth, tree.mask, self.cache_len, self.k_cache, self.v_cache)
        raise ValueError(name)
