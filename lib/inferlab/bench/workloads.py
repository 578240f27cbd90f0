"""What a serving benchmark feeds the engine, and what it measures: requests in, latencies out.

Latency vocabulary (as in vLLM's benchmarks): TTFT, time to first token (arrival to the
first sampled token, queueing included); TPOT, time per output token after the first
((finish - first token) / (output tokens - 1)); throughput, output tokens per second of
wall time for the whole run. Percentiles are reported only with enough samples to mean
something (a "p99 of ten samples" is just the maximum).
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferlab.engine.llm_engine import LLMEngine, StepRecord


@dataclass
class Request:
    """One benchmark request: the prompt's token ids, how many tokens to generate, when it arrives."""

    prompt_token_ids: list[int]
    max_tokens: int
    arrival: float = 0.0  # seconds after the start of the run


class NullTokenizer:
    """For random-weight models: token ids in, empty text out (timing needs no text)."""

    eos_token_id = None
    pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        raise ValueError("NullTokenizer takes token-id prompts only")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return ""


def synthetic_requests(n: int, prompt_len: tuple[int, int], output_len: tuple[int, int], vocab_size: int,
                       seed: int = 0, rate: float | None = None) -> list[Request]:
    """``n`` requests, lengths uniform in the given inclusive ranges, Poisson arrivals at ``rate``/s.

    ``rate=None``: everything arrives at time 0 (an offline batch).
    """
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        length = rng.randint(*prompt_len)
        ids = [rng.randrange(2, vocab_size) for _ in range(length)]
        out.append(Request(ids, rng.randint(*output_len), t))
        if rate:
            t += rng.expovariate(rate)
    return out


def static_decode_waste(output_lens: list[int], batch_size: int) -> float:
    """Fraction of decode slot-steps that static batching wastes on finished rows.

    Requests go in batches of ``batch_size`` in order; a batch runs ``max(output)`` steps
    with every row occupying its slot the whole time.
    """
    used = total = 0
    for i in range(0, len(output_lens), batch_size):
        batch = output_lens[i:i + batch_size]
        used += sum(batch)
        total += len(batch) * max(batch)
    return 1 - used / total


@dataclass
class RunResult:
    """One system's run over a workload: wall time, tokens, per-request latencies, step trace."""

    name: str
    wall_s: float
    output_tokens: int
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    steps: int = 0
    padding_tokens: int = 0
    trace: list[StepRecord] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.wall_s

    def summary(self) -> dict[str, Any]:
        from inferlab.stats import percentile

        out = {"name": self.name, "wall_s": round(self.wall_s, 4), "output_tokens": self.output_tokens,
               "throughput_tok_s": round(self.throughput, 2), "steps": self.steps,
               "padding_tokens": self.padding_tokens, "requests": len(self.e2e) or None}
        for key in ("ttft", "tpot", "e2e"):
            values = getattr(self, key)
            if values:
                out[f"{key}_p50_ms"] = round(1000 * percentile(values, 50), 3)
                if len(values) >= 20:
                    out[f"{key}_p99_ms"] = round(1000 * percentile(values, 99), 3)
        return out


def _params(req: Request):
    from inferlab.engine.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=req.max_tokens, ignore_eos=True)


def run_engine(engine: LLMEngine, requests: list[Request], name: str = "engine", realtime: bool = True) -> RunResult:
    """Feed ``requests`` to the engine at their arrival times and step until all finish.

    ``realtime``: requests join when the wall clock reaches their arrival (idle gaps are
    slept); with every arrival at 0 this is an offline batch.
    """
    engine.trace.clear()
    pending = sorted(enumerate(requests), key=lambda x: x[1].arrival)
    ids, outputs = [], []
    t0 = time.perf_counter()
    while pending or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while pending and (pending[0][1].arrival <= now or not realtime):
            i, req = pending.pop(0)
            ids.append(engine.add_request(f"r{i}", req.prompt_token_ids, _params(req), arrival_time=t0 + req.arrival))
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[0][1].arrival - now))
            continue
        outputs += engine.step()
    wall = time.perf_counter() - t0
    for rid in ids:
        engine.sequences.pop(rid, None)
    return _result(name, wall, outputs, engine.trace)


def _result(name: str, wall: float, outputs, trace) -> RunResult:
    res = RunResult(name, wall, sum(len(o.outputs[0].token_ids) for o in outputs), steps=len(trace),
                    padding_tokens=sum(s.num_padding_tokens for s in trace), trace=list(trace))
    for o in outputs:
        m, n = o.metrics, len(o.outputs[0].token_ids)
        res.ttft.append(m.ttft)
        res.e2e.append(m.e2e)
        if n > 1:
            res.tpot.append(m.tpot(n))
    return res


# ------------------------------------------------------------------ request-length traces
# Published mean lengths (vLLM paper, Kwon et al. 2023, §6.1, Fig. 11): ShareGPT prompts 161 /
# outputs 338 tokens, Alpaca 19 / 58. The log-normal spreads (sigma) are ours: ShareGPT is
# heavy-tailed, Alpaca narrow.
TRACE_SPECS = {
    "sharegpt": {"input_mean": 161, "output_mean": 338, "input_sigma": 1.0, "output_sigma": 0.9},
    "alpaca": {"input_mean": 19, "output_mean": 58, "input_sigma": 0.6, "output_sigma": 0.7},
}


@dataclass(frozen=True)
class TraceEntry:
    """One line of a length trace (data/traces/): arrival time (seconds), prompt and output
    lengths (tokens). Lengths only, no token ids: what the memory simulator
    (:mod:`inferlab.paging_sim`) serves."""

    rid: int
    arrival: float
    prompt_len: int
    output_len: int

    @property
    def final_len(self) -> int:
        return self.prompt_len + self.output_len


def _lognormal_int(rng: random.Random, mean: float, sigma: float) -> int:
    """An int >= 1 from a log-normal whose mean is ``mean`` (mu = ln(mean) - sigma^2 / 2)."""
    return max(1, round(rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)))


def generate_trace(kind: str = "sharegpt", num_requests: int = 1000, rate: float = 4.0,
                   max_len: int = 2048, seed: int = 0) -> list[TraceEntry]:
    """A length trace with Poisson arrivals (``rate`` requests/s) and ``kind``-like lengths.

    Lengths are log-normal with the published means (see ``TRACE_SPECS``); a request whose
    prompt + output exceeds ``max_len`` is redrawn, as datasets are filtered to the model's
    context in the paper's setup.
    """
    spec = TRACE_SPECS[kind]
    rng = random.Random(seed)
    t, out = 0.0, []
    for rid in range(num_requests):
        t += rng.expovariate(rate)
        while True:
            p = _lognormal_int(rng, spec["input_mean"], spec["input_sigma"])
            o = _lognormal_int(rng, spec["output_mean"], spec["output_sigma"])
            if p + o <= max_len:
                break
        out.append(TraceEntry(rid, round(t, 4), p, o))
    return out


def save_trace(trace: list[TraceEntry], path: str | Path) -> Path:
    """Write a trace as JSON (``.json``) or CSV (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in trace]
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, separators=(",", ":")) + "\n")
    else:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


def load_trace(name_or_path: str | Path) -> list[TraceEntry]:
    """Load a trace: a path, or a name in data/traces/ (``"sharegpt"`` -> sharegpt_like.json)."""
    path = Path(name_or_path)
    if not path.exists():
        from inferlab.paths import traces_dir

        path = traces_dir() / f"{name_or_path}_like.json"
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
    else:
        with path.open() as f:
            rows = list(csv.DictReader(f))
    return [TraceEntry(int(r["rid"]), float(r["arrival"]), int(r["prompt_len"]), int(r["output_len"])) for r in rows]


def write_default_traces(out_dir: str | Path | None = None) -> list[Path]:
    """(Re)generate the committed traces (fixed seeds): ``python -m inferlab.bench paging --write-traces``."""
    from inferlab.paths import traces_dir

    out = Path(out_dir) if out_dir is not None else traces_dir()
    return [
        save_trace(generate_trace("sharegpt", 1000, rate=4.0, seed=0), out / "sharegpt_like.json"),
        save_trace(generate_trace("alpaca", 1000, rate=30.0, seed=1), out / "alpaca_like.json"),
    ]
