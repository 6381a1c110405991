"""Load an artifact folder and generate: `load(path).generate(...)` / `.stream(...)`.

The engine owns the caches (allocated once for S rows), the round loop (jetspec_compile.decode — the
same loop for every backend and for the eager oracle), stop tokens / strings and statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from jetspec_compile.adaptive import CHAIN, Arm
from jetspec_compile.artifact import Manifest
from jetspec_compile.decode import Decoder, Stats
from jetspec_compile.graphs import budget_graph_name, budget_spec, split_graph_name
from jetspec_compile.errors import ArtifactError, JetSpecError

@dataclass
class Generation:
    text: str | None
    tokens: list[int]
    stats: Stats

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason


def _version_minor(v: str | None) -> str | None:
    return ".".join(v.split("+")[0].split(".")[:2]) if v else None


def _check_versions(manifest: Manifest, backend, folder: Path) -> None:
    """The backend's ``version_libs`` must have the minor versions that compiled the graphs."""
    from jetspec_compile.artifact import library_versions

    built = manifest.versions
    here = library_versions()
    for lib in backend.version_libs:
        if _version_minor(built.get(lib)) != _version_minor(here.get(lib)):
            raise ArtifactError(f"{folder / 'manifest.json'}: field versions.{lib} is {built.get(lib)!r}, this "
                                f"machine has {here.get(lib)!r}; {backend.name} graphs only load with the {lib} "
                                "minor version that built them (re-export here)")


class Engine:
    """A loaded artifact. ``mode="compiled"`` runs the backend's graphs; ``mode="eager"`` rebuilds the
    target and head from the artifact's configs and weights and runs the uncompiled graphs (the oracle).

    ``artifact``: the typed manifest; ``manifest``: the same as the JSON object on disk (for tools)."""

    def __init__(self, folder: Path, manifest: Manifest, graphs: dict, device: torch.device, mode: str):
        self.folder = folder
        self.artifact = manifest
        self.manifest = manifest.to_json()
        self.mode = mode
        self.device = device
        s = manifest.shapes
        self.decoder = Decoder(graphs, budget=s.budget, topk=s.topk, max_seq_len=s.max_seq_len,
                               prefill_chunk=s.prefill_chunk, dims=manifest.cache_dims(), device=device,
                               lookup=manifest.lookup, arms=budget_arms(manifest))
        self.eos_token_ids: list[int] = list(manifest.eos_token_ids or [])
        self.tokenizer = None
        if manifest.tokenizer_file:
            from jetspec_compile.artifact import load_tokenizer

            self.tokenizer = load_tokenizer(folder, manifest.tokenizer_file)
        self.last_stats: Stats | None = None

    def calibrate(self, reps: int = 10) -> dict[str, float]:
        """Re-measure each budget's round cost on this machine (ms) and use it for adaptive decoding."""
        costs = self.decoder.recalibrate(reps)
        return {k: round(v * 1e3, 4) for k, v in costs.items()}

    def replica(self) -> "Engine":
        """Another engine over the same loaded graphs and weights, with its own caches (one per concurrent
        request: graphs are shared, caches are not)."""
        return Engine(self.folder, self.artifact, self.decoder.graphs, self.device, self.mode)

    # ---- shapes ---------------------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        return self.decoder.B

    @property
    def max_seq_len(self) -> int:
        return self.decoder.S

    # ---- text -----------------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise JetSpecError(f"{self.folder}: this artifact has no tokenizer.json; pass token ids, not text")
            return self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return [int(t) for t in prompt]

    def decode(self, tokens: Sequence[int]) -> str:
        if self.tokenizer is None:
            raise JetSpecError(f"{self.folder}: this artifact has no tokenizer.json; cannot decode text")
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)

    # ---- generation -----------------------------------------------------------------------------------
    @property
    def budgets(self) -> list[int]:
        """Every compiled budget (1: the plain step of adaptive decoding)."""
        return self.decoder.budgets

    def _rounds(self, ids, max_new_tokens, temperature, top_k, top_p, seed, speculative, stats, budget):
        if max_new_tokens < 0:
            raise JetSpecError(f"max_new_tokens is {max_new_tokens}; expected >= 0")
        if temperature < 0:
            raise JetSpecError(f"temperature is {temperature}; expected >= 0")
        if budget is not None and budget not in self.decoder.fixed_arms:
            raise JetSpecError(f"budget {budget} is not compiled in {self.folder}; expected one of "
                               f"{self.decoder.fixed_arms}" + (" (0: the lookup chain alone)" if CHAIN in
                                                               self.decoder.fixed_arms else ""))
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_token_ids=self.eos_token_ids,
                  stats=stats)
        if not speculative:
            return self.decoder.autoregressive(ids, max_new_tokens, **kw)
        return self.decoder.speculative(ids, max_new_tokens, budget=budget, **kw)

    def stream_tokens(self, prompt, max_new_tokens: int = 128, *, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      speculative: bool = True, budget: int | None = None) -> Iterator[list[int]]:
        """Yield the token ids committed each round. Stats land in ``self.last_stats``.

        ``budget``: a fixed compiled budget; None decodes adaptively when the artifact has several budgets
        (else at its own budget)."""
        stats = Stats()
        self.last_stats = stats
        yield from self._rounds(self.encode(prompt), max_new_tokens, temperature, top_k, top_p, seed,
                                speculative, stats, budget)

    def stream(self, prompt, max_new_tokens: int = 128, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: Sequence[str] | str | None = None,
               speculative: bool = True, budget: int | None = None) -> Iterator[str]:
        """Yield text pieces as rounds commit tokens; stops at EOS, a stop string or max_new_tokens."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        tokens: list[int] = []
        sent = ""
        rounds = self.stream_tokens(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=seed, speculative=speculative, budget=budget)
        for chunk in rounds:
            tokens += chunk
            text = self.decode(tokens)
            hit = min((i for i in (text.find(s, max(0, len(sent) - len(s))) for s in stops) if i >= 0), default=-1)
            if hit >= 0:
                if hit > len(sent):
                    yield text[len(sent):hit]
                self.last_stats.finish_reason = "stop"
                rounds.close()
                return
            safe = text.rstrip("\ufffd")  # hold back an incomplete UTF-8 sequence
            hold = max((len(s) - 1 for s in stops), default=0)  # and a possible stop-string prefix
            safe = safe[: max(len(sent), len(safe) - hold)]
            if len(safe) > len(sent):
                yield safe[len(sent):]
                sent = safe
        text = self.decode(tokens)
        if len(text) > len(sent):
            yield text[len(sent):]

    def generate(self, prompt, max_new_tokens: int = 128, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: Sequence[str] | str | None = None,
                 speculative: bool = True, budget: int | None = None) -> Generation:
        """Generate after ``prompt`` (text, or token ids). Returns text (when a tokenizer is present), tokens, stats."""
        if stop and self.tokenizer is not None:
            text = "".join(self.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                       seed=seed, stop=stop, speculative=speculative, budget=budget))
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []
            return Generation(text, ids, self.last_stats)
        tokens = [t for c in self.stream_tokens(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, seed=seed, speculative=speculative, budget=budget)
                  for t in c]
        text = self.decode(tokens) if self.tokenizer is not None else None
        return Generation(text, tokens, self.last_stats)


def _load_sub(module: torch.nn.Module, weights: dict, prefix: str, folder: Path) -> None:
    want = module.state_dict()
    missing = [k for k in want if prefix + k not in weights]
    if missing:
        raise ArtifactError(f"{folder / 'weights.safetensors'}: missing {[prefix + k for k in missing[:5]]}")
    module.load_state_dict({k: weights[prefix + k] for k in want}, strict=True)


def eager_models(folder: Path, manifest: Manifest, weights: dict, device: torch.device):
    """Rebuild the target, the head and the SpecConfig of an artifact from its configs and weights.

    Returns ``(target, head, spec)``; ``target.model`` is the Hugging Face model."""
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    from jetspec_compile.head import DraftHead
    from jetspec_compile.target import Target

    tcfg = dict(manifest.target.config)
    model_type = tcfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **tcfg)
    dtype = manifest.torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    _load_sub(model, weights, "target.model.", folder)
    target = Target(model.to(device).eval(), list(manifest.target.tap_layers))
    hcfg = {k: v for k, v in manifest.head.config.items() if k not in ("model_type", "dtype")}
    head = DraftHead(Qwen3Config(**hcfg))
    _load_sub(head, weights, "head.", folder)
    head = head.to(device=device, dtype=dtype).eval()
    if manifest.head.depth != head.depth:
        head.set_depth(manifest.head.depth)
    return target, head, manifest.spec()


def _eager_graphs(folder: Path, manifest: Manifest, weights: dict, device: torch.device) -> dict:
    from jetspec_compile.graphs import build_graphs
    from jetspec_compile.eager_oracle import EagerGraphs

    target, head, spec = eager_models(folder, manifest, weights, device)
    depths = list(manifest.budgets.depth.values()) if manifest.budgets else []
    head.set_depth(max([head.depth] + depths))  # a causal head's first depths do not depend on later ones
    by_budget: dict[int | None, list[str]] = {}
    for name in manifest.graphs:
        base, b = split_graph_name(name)
        by_budget.setdefault(b, []).append(base)
    graphs = {}
    for b, names in by_budget.items():
        built = build_graphs(target, head, spec if b is None else budget_spec(spec, b, manifest.budget_static_tree(b)), names)
        graphs.update({n if b is None else budget_graph_name(n, b): g for n, g in built.items()})
    return EagerGraphs(graphs)


def budget_arms(manifest: Manifest) -> list[Arm]:
    """The artifact's compiled budgets (its own included; 1: the plain step) with drafted depth and round cost."""
    b = manifest.budgets
    if not b:
        return []
    arms = [Arm(int(n), b.depth[n], b.cost_s(n)) for n in b.compiled]
    if manifest.lookup and "chain" in b.cost_ms:  # the lookup chain alone (artifacts from before it: no such arm)
        arms.append(Arm(CHAIN, manifest.lookup, float(b.cost_ms["chain"]) / 1e3))
    return arms


def load(path: str | Path, device: str | torch.device | None = None, *, mode: str = "compiled",
         verify_hashes: bool = True) -> Engine:
    """Validate an artifact folder (schema, hashes, backend, library versions) and load its graphs."""
    from jetspec_compile.artifact import artifact_path, load_manifest
    from jetspec_compile.backends import get_backend
    from jetspec_compile.safetensors_io import load_safetensors
    from jetspec_compile.validate import torch_device as _device

    folder = Path(path)
    manifest = load_manifest(folder, verify_hashes=verify_hashes)
    dev = _device(device if device is not None else manifest.device)
    if mode not in ("compiled", "eager"):
        raise JetSpecError(f"mode {mode!r}; expected 'compiled' or 'eager'")
    weights = load_safetensors(artifact_path(folder, manifest.weights, "weights"), device=dev)
    if mode == "eager":
        graphs = _eager_graphs(folder, manifest, weights, dev)
        return Engine(folder, manifest, graphs, dev, mode)
    backend = get_backend(manifest.backend)
    if manifest.device_type != dev.type and backend.device_bound:
        raise ArtifactError(f"{folder / 'manifest.json'}: field device is {manifest.device!r}; cannot load on "
                            f"{dev} (re-export with --device {dev.type})")
    backend.check_available(str(dev))
    _check_versions(manifest, backend, folder)
    graphs = {}
    for name, info in manifest.graphs.items():
        graph_file = artifact_path(folder, info.file, f"graphs.{name}.file")
        try:
            graphs[name] = backend.load_graph(graph_file, str(dev), weights, graph=name)
        except Exception as e:  # a corrupt graph (hashed by its author) must not end in a native stack trace
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ArtifactError(f"{graph_file}: cannot load the {backend.name} graph {name!r} "
                                f"({first})") from None
    return Engine(folder, manifest, graphs, dev, mode)
