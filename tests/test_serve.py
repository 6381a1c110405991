"""`jetspec-compile serve`: live servers on 127.0.0.1, the official `openai` client, equality with
Engine.generate, replicas, queue overflow, disconnects, one bad request per field, metrics, CLI errors."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from jetspec_compile.runtime import load
from serve_helpers import ServerThread, wait_until

openai = pytest.importorskip("openai")

PROMPTS = ["def f(x):", "hello world", "abc", "class A:\n  pass\n"]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _model(artifact, replicas=1, **kw):
    from jetspec_compile.runtime.serve import build_model

    return build_model(artifact, replicas, name="tiny", **kw)


@pytest.fixture(scope="module")
def server(aoti_artifact):
    """A 2-replica server over the tiny aoti artifact, plus an engine to compare with."""
    from jetspec_compile.runtime.serve import create_app

    model = _model(aoti_artifact, 2)
    with ServerThread(create_app(model, max_queue=64)) as srv:
        srv.model = model
        srv.reference = load(aoti_artifact)
        yield srv
    torch.set_num_threads(1)


def _client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=60, max_retries=0)


def test_openai_client_equals_generate(server):
    client = _client(server)
    for prompt in PROMPTS:
        want = server.reference.generate(prompt, 24)
        got = client.completions.create(model="tiny", prompt=prompt, max_tokens=24)
        assert got.choices[0].text == want.text
        assert got.choices[0].finish_reason == "length"
        assert got.usage.prompt_tokens == len(server.reference.encode(prompt))
        assert got.usage.completion_tokens == len(want.tokens) == 24
        pieces = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=24, stream=True))
        text = "".join(p.choices[0].text for p in pieces if p.choices)
        assert text == want.text and len(pieces) > 2
        assert pieces[-1].choices[0].finish_reason == "length"


def test_stop_strings_token_ids_usage_and_ar(server, aoti_artifact):
    client = _client(server)
    full = server.reference.generate("hello world", 40)
    stop = full.text[10:13]
    want = server.reference.generate("hello world", 40, stop=[stop])
    got = client.completions.create(model="tiny", prompt="hello world", max_tokens=40, stop=[stop])
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens == len(want.tokens)
    stream = client.completions.create(model="tiny", prompt="hello world", max_tokens=40, stop=stop, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.completion_tokens == len(want.tokens)
    ids = server.reference.encode("abc")
    got = client.completions.create(model="tiny", prompt=ids, max_tokens=10)
    assert got.choices[0].text == server.reference.generate(ids, 10).text
    ar = server.reference.generate("abc", 10, speculative=False).text
    assert ar == server.reference.generate("abc", 10).text  # lossless: --ar serves the same greedy text


def test_chat_completions_with_a_template(server):
    from transformers.utils.chat_template_utils import render_jinja_template

    client = _client(server)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    server.model.chat_template = CHAT_TEMPLATE
    try:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        rendered = render_jinja_template([messages], chat_template=CHAT_TEMPLATE, add_generation_prompt=True)[0][0]
        want = server.reference.generate(rendered, 12).text
        got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
        assert got.choices[0].message.content == want and got.choices[0].message.role == "assistant"
        stream = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=12,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == want
    finally:
        server.model.chat_template = None


def test_models_health_metrics(server):
    client = _client(server)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["replicas"] == 2
    client.completions.create(model="tiny", prompt="abc", max_tokens=8)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in ("jetspec_requests_total", "jetspec_completion_tokens_total", "jetspec_rounds_total",
                 "jetspec_committed_tokens_total", 'jetspec_depth_reached_total{depth="1"}',
                 'jetspec_stage_ms_bucket{le="1.0",stage="verify"}', "jetspec_time_to_first_text_seconds_count",
                 "jetspec_replicas_busy", "jetspec_tau_count"):
        assert name in text, name


def test_concurrent_requests_on_two_replicas(server):
    want = {p: server.reference.generate(p, 20).text for p in PROMPTS}
    client = _client(server)

    def one(i):
        p = PROMPTS[i % len(PROMPTS)]
        return p, client.completions.create(model="tiny", prompt=p, max_tokens=20).choices[0].text

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert all(text == want[p] for p, text in results)


BAD = [  # (body, status, param)
    ({"prompt": "x"}, 400, "model"),
    ({"model": "other", "prompt": "x"}, 404, "model"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "tiny", "prompt": ""}, 400, "prompt"),
    ({"model": "tiny", "prompt": 5}, 400, "prompt"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),
    ({"model": "tiny", "prompt": [1, 2, 100000]}, 400, "prompt"),
    ({"model": "tiny", "prompt": [-1]}, 400, "prompt"),
    ({"model": "tiny", "prompt": "x" * 200}, 400, "prompt"),  # longer than max_seq_len - budget
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 2**40}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "temperature": 0.7}, 400, "temperature"),  # artifact has no verify_sample
    ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "top_k": -2}, 400, "top_k"),
    ({"model": "tiny", "prompt": "x", "top_k": 1.5}, 400, "top_k"),
    ({"model": "tiny", "prompt": "x", "seed": -1}, 400, "seed"),
    ({"model": "tiny", "prompt": "x", "seed": 2**64}, 400, "seed"),
    ({"model": "tiny", "prompt": "x", "stop": ""}, 400, "stop"),
    ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "tiny", "prompt": "x", "stop": 3}, 400, "stop"),
    ({"model": "tiny", "prompt": "x", "n": 2}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "tiny", "prompt": "x", "stream_options": {"include_usage": 1}}, 400, "stream_options.include_usage"),
    ({"model": "tiny", "prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ({"model": "tiny", "prompt": "x", "echo": True}, 400, "echo"),
    ({"model": "tiny", "prompt": "x", "best_of": 3}, 400, "best_of"),
    ({"model": "tiny", "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"model": "tiny", "prompt": "x", "frequency_penalty": 1}, 400, "frequency_penalty"),
    ({"model": "tiny", "prompt": "x", "logit_bias": {"5": 10}}, 400, "logit_bias"),
]
BAD_CHAT = [
    ({"model": "tiny"}, 400, "messages"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400,
     "tools"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}]}, 400, "messages"),  # no chat template
]


@pytest.mark.parametrize("path,case", [("/v1/completions", c) for c in BAD] + [("/v1/chat/completions", c)
                                                                                for c in BAD_CHAT])
def test_bad_request_per_field(server, path, case):
    body, status, param = case
    r = httpx.post(server.url + path, json=body, timeout=10)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


@pytest.mark.parametrize("raw,status", [(b"", 400), (b"{not json", 400), (b"[1, 2]", 400), (b"null", 400),
                                        (b'{"model": "tiny", "prompt": NaN}', 400)])
def test_malformed_bodies_and_routes(server, raw, status):
    r = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"},
                   timeout=10)
    assert r.status_code == status and "error" in r.json() and "Traceback" not in r.text


def test_unknown_route_and_method(server):
    assert httpx.get(server.url + "/v2/nothing", timeout=10).json()["error"]["message"] == "no route /v2/nothing"
    r = httpx.get(server.url + "/v1/completions", timeout=10)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


class _Gate:
    """Blocks every generation of the wrapped engines until ``open()``; counts started generations."""

    def __init__(self, engines):
        self.event, self.started = threading.Event(), 0
        self.lock = threading.Lock()
        for e in engines:
            inner = e.stream

            def gated(*a, _inner=inner, **k):
                with self.lock:
                    self.started += 1
                assert self.event.wait(30)
                yield from _inner(*a, **k)

            e.stream = gated

    def open(self):
        self.event.set()


def test_queue_overflow_gets_503(aoti_artifact):
    from jetspec_compile.runtime.serve import create_app

    model = _model(aoti_artifact, 1)
    gate = _Gate(model.engines)
    with ServerThread(create_app(model, max_queue=1)) as srv:
        client = _client(srv)
        with cf.ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.completions.create, model="tiny", prompt="abc", max_tokens=5)
            assert wait_until(lambda: gate.started == 1)
            queued = pool.submit(client.completions.create, model="tiny", prompt="abc", max_tokens=5)
            assert wait_until(lambda: httpx.get(srv.url + "/health", timeout=5).json()["waiting"] == 1)
            r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "abc"}, timeout=10)
            assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
            assert r.headers["retry-after"] == "1"
            gate.open()
            assert running.result(30).choices[0].text == queued.result(30).choices[0].text
        assert 'jetspec_requests_total{endpoint="completions",status="503"} 1.0' in httpx.get(
            srv.url + "/metrics", timeout=10).text


def test_disconnect_mid_stream_frees_the_replica(aoti_artifact):
    from jetspec_compile.runtime.serve import create_app

    model = _model(aoti_artifact, 1)
    engine = model.engines[0]
    rounds = []
    verify = engine.decoder.graphs["verify"]

    def slow_verify(*a):  # 20 ms per round: a 90-token generation would take >= 1 s
        rounds.append(1)
        time.sleep(0.02)
        return verify(*a)

    engine.decoder.graphs = {**engine.decoder.graphs, "verify": slow_verify}
    with ServerThread(create_app(model, max_queue=4)) as srv:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 90, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
        at_close = len(rounds)
        assert wait_until(lambda: httpx.get(srv.url + "/health", timeout=5).json()["busy"] == 0, timeout=5)
        assert len(rounds) <= at_close + 3  # stopped within a round or two of the disconnect
        assert len(rounds) < 60
        # the replica serves the next request normally
        ok = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 4},
                        timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def test_seeded_sampling_equals_generate(onnx_artifact):
    from jetspec_compile.runtime.serve import create_app

    model = _model(onnx_artifact, 2)
    ref = load(onnx_artifact)
    with ServerThread(create_app(model)) as srv:
        client = _client(srv)
        for seed in (1, 2):
            want = ref.generate("abc", 16, temperature=0.9, top_p=0.9, top_k=20, seed=seed).text
            got = client.completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=0.9, top_p=0.9,
                                            seed=seed, extra_body={"top_k": 20})
            assert got.choices[0].text == want


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "jetspec_compile.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["serve", "/nonexistent/artifact"], "artifact folder not found"),
    (["serve", "x", "--port", "70000"], "--port"),
    (["serve", "x", "--replicas", "0"], "--replicas"),
    (["serve", "x", "--max-queue", "-1"], "--max-queue"),
    (["serve", "x", "--host", ""], "--host"),
    (["serve-triton", "x", "--instances", "0"], "--instances"),
])
def test_cli_errors_are_one_line(args, needle, capsys):
    from jetspec_compile.cli import main

    try:
        code = main(args)
    except SystemExit as e:  # argparse errors exit through Parser.error
        code = e.code
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error:") and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_port_in_use(capsys):
    from jetspec_compile.cli import main
    from jetspec_compile.runtime.serve.cli import listen

    busy = listen("127.0.0.1", 0)
    try:  # the port is checked before the artifact is loaded
        assert main(["serve", "/nonexistent", "--port", str(busy.getsockname()[1])]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: cannot listen on 127.0.0.1") and "Traceback" not in err
    finally:
        busy.close()


# ---- slow: the real CLI in a subprocess, 100 concurrent requests at 2 replicas ---------------------------

def _start_cli_server(artifact, *extra, timeout=120):
    proc = subprocess.Popen([sys.executable, "-m", "jetspec_compile.cli", "serve", str(artifact), "--port", "0",
                             "--model-name", "tiny", *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    for line in proc.stderr:  # the first line names the URL
        if line.startswith("serving"):
            url = line.split(" on ")[1].split("/v1")[0]
            return proc, url
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the CLI server did not start")


def _stop(proc):
    proc.terminate()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


@pytest.mark.slow
def test_cli_server_100_concurrent_requests_at_two_replicas(aoti_artifact):
    import asyncio

    ref = load(aoti_artifact)
    want = {p: ref.generate(p, 16).text for p in PROMPTS}
    proc, url = _start_cli_server(aoti_artifact, "--replicas", "2", "--max-queue", "50")
    try:
        async def run_all():
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)

            async def one(i):
                p = PROMPTS[i % len(PROMPTS)]
                try:
                    stream = await client.completions.create(model="tiny", prompt=p, max_tokens=16, stream=True)
                    return p, "".join([c.choices[0].text async for c in stream if c.choices])
                except openai.APIStatusError as e:
                    return p, e.status_code

            return await asyncio.gather(*(one(i) for i in range(100)))

        results = asyncio.run(run_all())
        texts = [(p, t) for p, t in results if isinstance(t, str)]
        rejected = [t for _, t in results if not isinstance(t, str)]
        assert len(results) == 100 and set(rejected) <= {503}
        assert len(texts) >= 52  # 2 replicas + 50 queue slots are admitted at once at the very least
        assert all(t == want[p] for p, t in texts)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert f'jetspec_requests_total{{endpoint="completions",status="200"}} {len(texts)}.0' in metrics
    finally:
        assert _stop(proc) in (0, 143, -15)


@pytest.mark.slow
def test_cli_server_ar_mode_and_sigterm(aoti_artifact):
    ref = load(aoti_artifact)
    proc, url = _start_cli_server(aoti_artifact, "--ar")
    try:
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 12}, timeout=60)
        assert r.json()["choices"][0]["text"] == ref.generate("abc", 12, speculative=False).text
        assert json.loads(httpx.get(url + "/v1/models", timeout=10).text)["data"][0]["id"] == "tiny"
    finally:
        code = _stop(proc)
    assert code in (0, 143, -15)
