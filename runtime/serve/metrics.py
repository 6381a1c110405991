"""Prometheus metrics of one server: requests, tokens, tau, per-depth acceptance, per-stage latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

_MS = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STAGES = ("draft", "verify", "host", "commit")


class Metrics:
    def __init__(self, pool_load=None):
        self.registry = r = CollectorRegistry()
        p = "jetspec_"
        self.requests = Counter(p + "requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "prompt tokens of finished generations", registry=r)
        self.completion_tokens = Counter(p + "completion_tokens", "generated tokens", registry=r)
        self.finished = Counter(p + "generations", "finished generations by finish reason", ["finish_reason"],
                                registry=r)
        self.rounds = Counter(p + "rounds", "decode rounds (one draft + verify each)", registry=r)
        self.committed = Counter(p + "committed_tokens", "tokens committed by the rounds (accepted + bonus); "
                                 "tau = committed_tokens / rounds", registry=r)
        self.depth_reached = Counter(p + "depth_reached", "rounds that reached draft depth d (accepted d-1)",
                                     ["depth"], registry=r)
        self.depth_accepted = Counter(p + "depth_accepted", "rounds that accepted a drafted token at depth d; "
                                      "acceptance at d = depth_accepted / depth_reached", ["depth"], registry=r)
        self.tau = Histogram(p + "tau", "tokens committed per round, per generation",
                             buckets=(1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 12, 16), registry=r)
        self.stage_ms = Histogram(p + "stage_ms", "per-round latency of each decode stage (ms)", ["stage"],
                                  buckets=_MS, registry=r)
        self.prefill_s = Histogram(p + "prefill_seconds", "prompt prefill time", buckets=_S, registry=r)
        self.ttft_s = Histogram(p + "time_to_first_text_seconds", "from admission to the first text piece "
                                "(queueing included)", buckets=_S, registry=r)
        self.queue_s = Histogram(p + "queue_seconds", "time waiting for a free replica", buckets=_S, registry=r)
        busy = Gauge(p + "replicas_busy", "replicas decoding now", registry=r)
        waiting = Gauge(p + "requests_waiting", "admitted requests waiting for a replica", registry=r)
        if pool_load is not None:
            busy.set_function(lambda: pool_load()[0])
            waiting.set_function(lambda: pool_load()[1])

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def finished_generation(self, result) -> None:
        st = result.stats
        self.prompt_tokens.inc(result.prompt_tokens)
        self.completion_tokens.inc(result.completion_tokens)
        self.finished.labels(result.finish_reason or "cancelled").inc()
        self.prefill_s.observe(st.prefill_s)
        self.queue_s.observe(result.queued_s)
        if result.first_piece_s is not None:
            self.ttft_s.observe(result.queued_s + result.first_piece_s)
        if not st.rounds:
            return
        self.rounds.inc(st.rounds)
        self.committed.inc(sum(st.accepted))
        self.tau.observe(st.tau)
        for stage in _STAGES:
            for s in st.stage_s.get(stage, ()):
                self.stage_ms.labels(stage).observe(1e3 * s)
        if st.mode == "speculative":
            self._depths(st.accepted)

    def _depths(self, accepted: list[int]) -> None:
        deepest = max(accepted) - 1
        for d in range(1, deepest + 1):
            reached = sum(1 for n in accepted if n - 1 >= d - 1)
            self.depth_reached.labels(str(d)).inc(reached)
            self.depth_accepted.labels(str(d)).inc(sum(1 for n in accepted if n - 1 >= d))

    def render(self) -> bytes:
        return generate_latest(self.registry)
