"""Load an artifact folder and generate: `load(path).generate(...)` / `.stream(...)`.

The engine owns the caches (allocated once for S rows), the round loop (jetspec_compile.decode — the
same loop for every backend and for the eager oracle), stop tokens / strings and statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from jetspec_compile.decode import CacheDims, Decoder, Stats
from jetspec_compile.errors import ArtifactError, JetSpecError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def _check_versions(manifest: dict, folder: Path) -> None:
    from jetspec_compile.export.artifact import library_versions

    backend = manifest["backend"]
    built = manifest.get("versions", {})
    here = library_versions()
    needs = {"aoti": ["torch"], "tensorrt": ["torch", "torch-tensorrt"]}.get(backend, [])
    for lib in needs:
        if _version_minor(built.get(lib)) != _version_minor(here.get(lib)):
            raise ArtifactError(f"{folder / 'manifest.json'}: field versions.{lib} is {built.get(lib)!r}, this "
                                f"machine has {here.get(lib)!r}; {backend} graphs only load with the {lib} "
                                "minor version that built them (re-export here)")


class Engine:
    """A loaded artifact. ``mode="compiled"`` runs the backend's graphs; ``mode="eager"`` rebuilds the
    target and head from the artifact's configs and weights and runs the uncompiled graphs (the oracle)."""

    def __init__(self, folder: Path, manifest: dict, graphs: dict, device: torch.device, mode: str):
        self.folder = folder
        self.manifest = manifest
        self.mode = mode
        self.device = device
        shapes = manifest["shapes"]
        t, h = manifest["target"]["config"], manifest["head"]["config"]
        dims = CacheDims(
            target_layers=int(t["num_hidden_layers"]), target_kv_heads=int(t["num_key_value_heads"]),
            target_head_dim=int(t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]),
            head_layers=int(h["num_hidden_layers"]), head_kv_heads=int(h["num_key_value_heads"]),
            head_head_dim=int(h.get("head_dim") or h["hidden_size"] // h["num_attention_heads"]),
            depth=int(shapes["depth"]), dtype=_DTYPES[manifest["dtype"]])
        self.decoder = Decoder(graphs, budget=shapes["budget"], topk=shapes["topk"],
                               max_seq_len=shapes["max_seq_len"], prefill_chunk=shapes["prefill_chunk"],
                               dims=dims, device=device, lookup=int((manifest.get("lookup") or {}).get("length", 0)))
        self.eos_token_ids: list[int] = list(manifest.get("eos_token_ids") or [])
        self.tokenizer = None
        tok = manifest.get("tokenizer")
        if tok:
            from jetspec_compile.export.artifact import load_tokenizer

            self.tokenizer = load_tokenizer(folder, tok["file"])
        self.last_stats: Stats | None = None

    def replica(self) -> "Engine":
        """Another engine over the same loaded graphs and weights, with its own caches (one per concurrent
        request: graphs are shared, caches are not)."""
        return Engine(self.folder, self.manifest, self.decoder.graphs, self.device, self.mode)

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
    def _rounds(self, ids, max_new_tokens, temperature, top_k, top_p, seed, speculative, stats):
        if max_new_tokens < 0:
            raise JetSpecError(f"max_new_tokens is {max_new_tokens}; expected >= 0")
        if temperature < 0:
            raise JetSpecError(f"temperature is {temperature}; expected >= 0")
        loop = self.decoder.speculative if speculative else self.decoder.autoregressive
        return loop(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                    eos_token_ids=self.eos_token_ids, stats=stats)

    def stream_tokens(self, prompt, max_new_tokens: int = 128, *, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      speculative: bool = True) -> Iterator[list[int]]:
        """Yield the token ids committed each round. Stats land in ``self.last_stats``."""
        stats = Stats()
        self.last_stats = stats
        yield from self._rounds(self.encode(prompt), max_new_tokens, temperature, top_k, top_p, seed,
                                speculative, stats)

    def stream(self, prompt, max_new_tokens: int = 128, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: Sequence[str] | str | None = None,
               speculative: bool = True) -> Iterator[str]:
        """Yield text pieces as rounds commit tokens; stops at EOS, a stop string or max_new_tokens."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        tokens: list[int] = []
        sent = ""
        rounds = self.stream_tokens(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=seed, speculative=speculative)
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
                 speculative: bool = True) -> Generation:
        """Generate after ``prompt`` (text, or token ids). Returns text (when a tokenizer is present), tokens, stats."""
        if stop and self.tokenizer is not None:
            text = "".join(self.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                       seed=seed, stop=stop, speculative=speculative))
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []
            return Generation(text, ids, self.last_stats)
        tokens = [t for c in self.stream_tokens(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, seed=seed, speculative=speculative) for t in c]
        text = self.decode(tokens) if self.tokenizer is not None else None
        return Generation(text, tokens, self.last_stats)


def _load_sub(module: torch.nn.Module, weights: dict, prefix: str, folder: Path) -> None:
    want = module.state_dict()
    missing = [k for k in want if prefix + k not in weights]
    if missing:
        raise ArtifactError(f"{folder / 'weights.safetensors'}: missing {[prefix + k for k in missing[:5]]}")
    module.load_state_dict({k: weights[prefix + k] for k in want}, strict=True)


def eager_models(folder: Path, manifest: dict, weights: dict, device: torch.device):
    """Rebuild the target, the head and the SpecConfig of an artifact from its configs and weights.

    Returns ``(target, head, spec)``; ``target.model`` is the Hugging Face model."""
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.head import DraftHead
    from jetspec_compile.target import Target

    tcfg = dict(manifest["target"]["config"])
    model_type = tcfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **tcfg)
    dtype = _DTYPES[manifest["dtype"]]
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    _load_sub(model, weights, "target.model.", folder)
    target = Target(model.to(device).eval(), manifest["target"]["tap_layers"])
    hcfg = {k: v for k, v in manifest["head"]["config"].items() if k not in ("model_type", "dtype")}
    head = DraftHead(Qwen3Config(**hcfg))
    _load_sub(head, weights, "head.", folder)
    head = head.to(device=device, dtype=dtype).eval()
    if manifest["head"]["depth"] != head.depth:
        head.set_depth(manifest["head"]["depth"])
    shapes = manifest["shapes"]
    spec = SpecConfig(budget=shapes["budget"], topk=shapes["topk"], max_seq_len=shapes["max_seq_len"],
                      prefill_chunk=shapes["prefill_chunk"], tree=manifest["tree"]["policy"],
                      static_tree=manifest["tree"]["static"],
                      lookup=int((manifest.get("lookup") or {}).get("length", 0)))
    return target, head, spec


def _eager_graphs(folder: Path, manifest: dict, weights: dict, device: torch.device) -> dict:
    from jetspec_compile.graphs import build_graphs
    from jetspec_compile.speculative import EagerGraphs

    target, head, spec = eager_models(folder, manifest, weights, device)
    names = [n for n in manifest["graphs"]]
    return EagerGraphs(build_graphs(target, head, spec, names))


def load(path: str | Path, device: str | torch.device | None = None, *, mode: str = "compiled",
         verify_hashes: bool = True) -> Engine:
    """Validate an artifact folder (schema, hashes, backend, library versions) and load its graphs."""
    from jetspec_compile.export.artifact import artifact_path, read_manifest
    from jetspec_compile.export.pipeline import get_backend
    from jetspec_compile.safetensors_io import load_safetensors
    from jetspec_compile.validate import torch_device as _device

    folder = Path(path)
    manifest = read_manifest(folder, verify_hashes=verify_hashes)
    dev = _device(device if device is not None else manifest["device"])
    if mode not in ("compiled", "eager"):
        raise JetSpecError(f"mode {mode!r}; expected 'compiled' or 'eager'")
    weights = load_safetensors(artifact_path(folder, manifest["weights"], "weights"), device=dev)
    if mode == "eager":
        graphs = _eager_graphs(folder, manifest, weights, dev)
        return Engine(folder, manifest, graphs, dev, mode)
    backend = get_backend(manifest["backend"])
    if manifest["device"].split(":")[0] != dev.type and manifest["backend"] != "onnx":
        raise ArtifactError(f"{folder / 'manifest.json'}: field device is {manifest['device']!r}; cannot load on "
                            f"{dev} (re-export with --device {dev.type})")
    backend.check_available(str(dev))
    _check_versions(manifest, folder)
    graphs = {}
    for name, info in manifest["graphs"].items():
        kwargs = {}
        if manifest["backend"] == "onnx":
            from jetspec_compile.graphs import GRAPH_CLASSES
            from jetspec_compile.export.onnx import forward_arg_names

            kwargs["input_names"] = forward_arg_names(GRAPH_CLASSES[name])
        graph_file = artifact_path(folder, info["file"], f"graphs.{name}.file")
        try:
            graphs[name] = backend.load_graph(graph_file, str(dev), weights, **kwargs)
        except Exception as e:  # a corrupt graph (hashed by its author) must not end in a native stack trace
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ArtifactError(f"{graph_file}: cannot load the {manifest['backend']} graph {name!r} "
                                f"({first})") from None
    return Engine(folder, manifest, graphs, dev, mode)
