"""Shared test helpers: a brute-force tree builder, a brute-force acceptance walk, an oracle draft."""

from __future__ import annotations

import numpy as np
import torch

from jetspec_compile.tree import Tree


def reference_tree(root, topk_tokens, topk_logprobs, budget):
    """Brute force: every node of the candidate tree (K children per node, D deep), scored in float32 as
    parent + log-prob; the B best (score descending, ties to the shallower node, then to the earlier one in
    its level, where a level lists its nodes by score, then parent's place, then rank). Returned depth by
    depth in level order, as lists (tokens, parents, depth, score)."""
    D, K = topk_tokens.shape
    lp = topk_logprobs.float().numpy()
    levels = [[(np.float32(0.0), int(root), -1)]]  # per level: (score, token, parent's place in its level)
    for d in range(D):
        kids = [(np.float32(s + lp[d, r]), int(topk_tokens[d, r]), j)
                for j, (s, _, _) in enumerate(levels[-1]) for r in range(K)]
        levels.append(sorted(kids, key=lambda c: -c[0]))  # stable: ties keep (parent place, rank) order
    ranked = sorted(((-float(n[0]), d, i) for d, lvl in enumerate(levels) for i, n in enumerate(lvl)))
    chosen = sorted((d, i) for _, d, i in ranked[:budget])
    index = {key: k for k, key in enumerate(chosen)}
    tokens = [levels[d][i][1] for d, i in chosen]
    parents = [index[(d - 1, levels[d][i][2])] if d else -1 for d, i in chosen]
    return tokens, parents, [d for d, _ in chosen], [float(levels[d][i][0]) for d, i in chosen]


def walk_accept(tokens, parents, valid, target_tokens):
    """Brute force: walk from the root following the (first) child whose token equals the target token."""
    children = {}
    for i, p in enumerate(parents):
        if i > 0 and valid[i]:
            children.setdefault(p, []).append(i)
    cur, path = 0, [0]
    while True:
        nxt = [c for c in children.get(cur, []) if tokens[c] == target_tokens[cur]]
        if not nxt:
            break
        cur = min(nxt)
        path.append(cur)
    return path, target_tokens[cur]


class OracleDraft:
    """A draft graph replacement that knows the target's greedy continuation ``full`` (prompt + output).

    At depth d it puts the true next token at a random rank (or leaves it out with probability
    ``miss``), so speculative decoding accepts long, branching paths: multi-row commits are exercised.
    """

    def __init__(self, draft_module, full, vocab, topk, miss=0.2, seed=0):
        self.draft = draft_module
        self.full = list(full)
        self.vocab, self.topk, self.miss = vocab, topk, miss
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, anchor, cache_len, ctx_k, ctx_v):
        L = int(cache_len.reshape(-1)[0])
        D, K = self.draft.depth, self.topk
        toks = torch.zeros(D, K, dtype=torch.int64)
        for d in range(D):
            pos = L + 1 + d
            true = self.full[pos] if pos < len(self.full) else 0
            perm = torch.randperm(self.vocab, generator=self.g)
            perm = perm[perm != true][:K]
            u = torch.rand(1, generator=self.g).item()
            if u > self.miss:  # mostly rank 0, sometimes rank 1: accepted paths leave the rank-0 chain
                r = 0 if u > self.miss + 0.25 or K == 1 else 1
                perm[r] = true
            toks[d] = perm
        lps = -torch.sort(torch.rand(D, K, generator=self.g) * 3, dim=-1).values
        dev = anchor.device  # the GPU kit (scripts/gpu_check) runs it on CUDA
        tree: Tree = self.draft.make_tree(anchor, toks.to(dev), lps.to(dev))
        return tree.tokens, tree.parents, tree.depth, tree.mask, tree.score


def empty_cache(target, max_len: int):
    """Zero K and V caches [layers, kv_heads, max_len, head_dim] for ``target``."""
    shape = (target.num_layers, target.num_kv_heads, max_len, target.head_dim)
    z = torch.zeros(shape, dtype=target.dtype, device=target.device)
    return z, z.clone()


def tiny_char_tokenizer(vocab_size: int = 128):
    """A character-level ``tokenizers.Tokenizer``: printable ASCII + newline, then fillers; the last two ids
    are ``<eos>`` and ``<mask>``. For tests that need text (stop strings, streaming, CLI)."""
    from tokenizers import Tokenizer, decoders, models

    if vocab_size < 98:
        raise ValueError("tiny_char_tokenizer needs vocab_size >= 98")
    vocab = {chr(32 + i): i for i in range(95)}
    vocab["\n"] = 95
    for i in range(96, vocab_size - 2):
        vocab[f"<x{i}>"] = i
    vocab["<eos>"], vocab["<mask>"] = vocab_size - 2, vocab_size - 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens(["<eos>", "<mask>"])
    tok.decoder = decoders.Fuse()
    return tok
