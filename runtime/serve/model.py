"""The served artifact: its engines (one per replica), tokenizer, chat template and request checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from jetspec_compile.errors import ArtifactError, JetSpecError

from .protocol import ApiError


def replica_engines(engine, replicas: int) -> list:
    """``engine`` plus ``replicas - 1`` ``Engine.replica()``s: the same graphs and weights, own caches.

    Found on this CPU (torch 2.13, see the README's Serving section): an AOTInductor runner is safe to call
    from several threads (its model container hands out its model instance under a mutex; concurrent
    greedy and seeded outputs equal sequential ones, tested), but ``boxed_run`` holds the GIL while the
    graph runs, so graph calls from different threads take turns whether or not each replica has its own
    runner (measured: own runners per replica gave no speed-up). Replicas therefore interleave requests
    round by round (a short request is not stuck behind a long one) at the throughput of one engine."""
    return [engine] + [engine.replica() for _ in range(replicas - 1)]


class ServedModel:
    """One artifact served under ``name``; ``engines`` are its replicas."""

    def __init__(self, engines: list, name: str, speculative: bool = True):
        self.engines = engines
        self.engine = engines[0]
        self.name = name
        self.speculative = speculative
        m = self.engine.artifact
        self.vocab_size = int(m.target.vocab_size)
        self.max_seq_len = int(m.shapes.max_seq_len)
        self.sampling = "verify_sample" in m.graphs or not speculative
        self.chat_template = chat_template(self.engine.folder, m)

    # ---- prompts ------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str | Sequence[int], param: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            if self.engine.tokenizer is None:
                raise ApiError(400, "this model has no tokenizer; send the prompt as a list of token ids", param)
            ids = self.engine.encode(prompt)
        else:
            ids = list(prompt)
            bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"token id {bad} is out of range; expected 0 <= id < {self.vocab_size}", param)
        try:
            self.engine.decoder.check_prompt(ids)
        except JetSpecError as e:
            raise ApiError(400, str(e), param) from None
        return ids

    def chat_ids(self, messages: list[dict]) -> list[int]:
        if self.chat_template is None:
            raise ApiError(400, f"model {self.name!r} has no chat template (its tokenizer_config.json has no "
                           "chat_template); use /v1/completions", "messages")
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template([messages], chat_template=self.chat_template,
                                                add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template may raise on any input it does not accept
            raise ApiError(400, f"the chat template rejected these messages ({str(e)[:200]})", "messages") from None
        return self.prompt_ids(rendered[0], "messages")

    def check_sampling(self, temperature: float) -> None:
        if temperature > 0 and not self.sampling:
            raise ApiError(400, "temperature > 0 needs the verify_sample graph, which this model was exported "
                           "without (--no-sampling); use temperature 0", "temperature")

    def text_of(self, tokens: list[int]) -> str:
        return self.engine.decode(tokens)


def chat_template(folder: Path, manifest) -> str | None:
    """The chat template of the artifact's tokenizer_config.json (a file the manifest lists and ``load``
    verified), or None."""
    from jetspec_compile.artifact import artifact_path

    name = next((f for f in manifest.tokenizer_files if Path(f).name == "tokenizer_config.json"), None)
    if name is None:
        return None
    path = artifact_path(folder, name, "tokenizer.files")
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot read the tokenizer config ({e})") from None
    if isinstance(template, list):  # the named-template form: [{"name": "default", "template": ...}]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template else None
