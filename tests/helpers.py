"""Shared test helpers: a brute-force heap tree builder, a brute-force acceptance walk, an oracle draft."""

from __future__ import annotations

import heapq

import torch

from jetspec_compile.tree import Tree


def heap_tree(root, topk_tokens, topk_logprobs, budget):
    """The reference best-first algorithm, with a Python heap. Returns lists (tokens, parents, depth, score)."""
    D, K = topk_tokens.shape
    tokens, parents, depth, score = [int(root)], [-1], [0], [0.0]
    heap = [(-0.0, 0)]
    while heap and len(tokens) < budget:
        neg, v = heapq.heappop(heap)  # ties on score -> lowest node index
        d = depth[v]
        if d == D:
            continue
        for j in range(K):
            if len(tokens) >= budget:
                break
            s = score[v] + float(topk_logprobs[d, j])
            tokens.append(int(topk_tokens[d, j]))
            parents.append(v)
            depth.append(d + 1)
            score.append(s)
            heapq.heappush(heap, (-s, len(tokens) - 1))
    return tokens, parents, depth, score


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
