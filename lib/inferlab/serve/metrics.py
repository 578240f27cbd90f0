"""``/metrics``: what a serving dashboard watches, in Prometheus' text format.

The names follow vLLM's (``vllm:num_requests_running`` becomes
``inferlab:num_requests_running``): queue depths and KV blocks in use are read from the
engine when scraped; tokens and latencies are recorded as each request finishes. TTFT
(time to first token) and TPOT (time per output token after the first) are the two
latencies a user feels: waiting for the answer to start, then its reading speed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """One registry per server (tests run several in one process)."""

    def __init__(self, stats):
        self.registry = r = CollectorRegistry()
        gauges = {"num_requests_running": "requests in the running batch",
                  "num_requests_waiting": "requests waiting for admission",
                  "kv_blocks_used": "KV-cache blocks in use", "kv_blocks_total": "KV-cache blocks in the pool"}
        keys = {"num_requests_running": "running", "num_requests_waiting": "waiting",
                "kv_blocks_used": "kv_blocks_used", "kv_blocks_total": "kv_blocks_total"}
        for name, doc in gauges.items():
            Gauge(f"inferlab:{name}", doc, registry=r).set_function(lambda k=keys[name]: stats()[k])
        self.prompt_tokens = Counter("inferlab:prompt_tokens", "prompt tokens processed", registry=r)
        self.generation_tokens = Counter("inferlab:generation_tokens", "tokens generated", registry=r)
        self.requests = Counter("inferlab:request_success", "finished requests", ["finish_reason"], registry=r)
        self.ttft = Histogram("inferlab:time_to_first_token_seconds", "arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("inferlab:time_per_output_token_seconds", "mean time per token after the first",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("inferlab:e2e_request_latency_seconds", "arrival to last token",
                             buckets=LATENCY_BUCKETS, registry=r)

    def record(self, num_prompt_tokens: int, num_generated: int, finish_reasons: list[str], metrics) -> None:
        """Count a finished request and observe its latencies (``metrics``: its RequestMetrics)."""
        self.prompt_tokens.inc(num_prompt_tokens)
        self.generation_tokens.inc(num_generated)
        for reason in finish_reasons:
            self.requests.labels(finish_reason=reason or "unknown").inc()
        if metrics is None or metrics.first_token_time is None or metrics.finish_time is None:
            return
        self.ttft.observe(metrics.ttft)
        self.e2e.observe(metrics.e2e)
        if num_generated > 1:
            self.tpot.observe(metrics.tpot(num_generated))

    def render(self) -> bytes:
        return generate_latest(self.registry)
