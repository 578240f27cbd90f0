"""Where KV-cache memory goes: contiguous reservation vs paging, simulated over request traces.

Reproduces, in miniature, the measurements that motivate PagedAttention (Kwon et al.,
"Efficient Memory Management for Large Language Model Serving with PagedAttention",
SOSP 2023): Fig. 2 (how much KV memory holds token states under each allocator) and
§6.3 (memory saved by sharing blocks in parallel sampling and beam search).

Contiguous baselines (the paper's Orca variants) give each request one contiguous range of
a single linear address space, placed first-fit, sized when the request is admitted:

- ``orca-max``    the model's maximum length (e.g. 2048 tokens);
- ``orca-pow2``   the next power of two at or above the request's final length;
- ``orca-oracle`` exactly the final length (knows the future: a lower bound on waste).

``paged`` is :class:`inferlab.paging.BlockAllocator`: fixed-size blocks allocated on demand.

At every step where the head of the queue waits for memory, KV memory is split into the
paper's categories, counted slot by slot:

- ``token_states``: slots holding a prompt or generated token's K/V;
- ``reservation``: slots reserved for tokens the request will generate later;
- ``internal_fragmentation``: reserved slots the request will never use;
- ``external_fragmentation``: free slots the waiting request cannot use because no single
  gap is large enough, though the free total would be (real gaps, not an estimate);
- ``free``: free slots that no placement could make enough for the waiting request.

Traces are lists of :class:`Request` (Poisson arrivals; ShareGPT-like and Alpaca-like
lengths with the published means) made by :func:`generate_trace` and stored in data/traces/.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inferlab.paging import BlockAllocator, OutOfBlocks, cdiv

__all__ = [
    "CATEGORIES",
    "PAPER_FIG2_TOKEN_STATES",
    "PAPER_SHARING_SAVINGS_ALPACA",
    "TRACE_SPECS",
    "ContiguousAllocator",
    "PagedAllocator",
    "Request",
    "SimResult",
    "block_size_sweep",
    "compare_allocators",
    "format_fig2",
    "generate_trace",
    "load_trace",
    "prefix_sharing",
    "save_trace",
    "sharing_savings",
    "simulate",
]

CATEGORIES = ("token_states", "reservation", "internal_fragmentation", "external_fragmentation", "free")

# Kwon et al., SOSP 2023, Fig. 2: share of KV-cache memory holding token states (OPT-13B, A100,
# ShareGPT-like serving experiment of §6.2). The other bar segments are not transcribed here.
PAPER_FIG2_TOKEN_STATES = {"orca-max": 0.204, "orca-pow2": 0.268, "orca-oracle": 0.382, "paged": 0.963}

# Kwon et al., SOSP 2023, §6.3 / Fig. 15 (Alpaca trace, OPT-13B): memory saved by sharing KV
# blocks, lowest and highest over 2, 4 and 6 parallel samples or beam width 2, 4 and 6.
PAPER_SHARING_SAVINGS_ALPACA = {"parallel": (0.061, 0.098), "beam": (0.376, 0.552)}

# Published mean lengths (vLLM paper §6.1, Fig. 11): ShareGPT prompts 161 / outputs 338 tokens,
# Alpaca 19 / 58. The log-normal spreads (sigma) are ours: ShareGPT is heavy-tailed, Alpaca narrow.
TRACE_SPECS = {
    "sharegpt": {"input_mean": 161, "output_mean": 338, "input_sigma": 1.0, "output_sigma": 0.9},
    "alpaca": {"input_mean": 19, "output_mean": 58, "input_sigma": 0.6, "output_sigma": 0.7},
}


@dataclass(frozen=True)
class Request:
    """One request of a trace: arrival time (seconds), prompt and output lengths (tokens)."""

    rid: int
    arrival: float
    prompt_len: int
    output_len: int

    @property
    def final_len(self) -> int:
        return self.prompt_len + self.output_len


# ------------------------------------------------------------------------------- traces
def _lognormal_int(rng: random.Random, mean: float, sigma: float) -> int:
    """An int >= 1 from a log-normal whose mean is ``mean`` (mu = ln(mean) - sigma^2 / 2)."""
    return max(1, round(rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)))


def generate_trace(kind: str = "sharegpt", num_requests: int = 1000, rate: float = 4.0,
                   max_len: int = 2048, seed: int = 0) -> list[Request]:
    """A request trace with Poisson arrivals (``rate`` requests/s) and ``kind``-like lengths.

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
        out.append(Request(rid, round(t, 4), p, o))
    return out


def save_trace(trace: list[Request], path: str | Path) -> Path:
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


def load_trace(name_or_path: str | Path) -> list[Request]:
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
    return [Request(int(r["rid"]), float(r["arrival"]), int(r["prompt_len"]), int(r["output_len"])) for r in rows]


def write_default_traces(out_dir: str | Path | None = None) -> list[Path]:
    """(Re)generate the committed traces: ``python -m inferlab.memsim --write-traces`` (fixed seeds)."""
    from inferlab.paths import traces_dir

    out = Path(out_dir) if out_dir is not None else traces_dir()
    return [
        save_trace(generate_trace("sharegpt", 1000, rate=4.0, seed=0), out / "sharegpt_like.json"),
        save_trace(generate_trace("alpaca", 1000, rate=30.0, seed=1), out / "alpaca_like.json"),
    ]


# ------------------------------------------------------------------------------- allocators
@dataclass
class _Live:
    req: Request
    generated: int = 0

    @property
    def num_tokens(self) -> int:
        return self.req.prompt_len + self.generated


class ContiguousAllocator:
    """One contiguous range per request in a linear space of ``memory_tokens`` slots, first-fit.

    ``policy`` is ``"max"`` (reserve ``max_len``), ``"pow2"`` (next power of two of the final
    length) or ``"oracle"`` (exactly the final length). Gaps left by finished requests stay
    where they are (no compaction), which is what makes external fragmentation real.
    """

    def __init__(self, memory_tokens: int, policy: str = "max", max_len: int = 2048):
        if policy not in ("max", "pow2", "oracle"):
            raise ValueError(f"policy must be 'max', 'pow2' or 'oracle', got {policy!r}")
        self.memory_tokens, self.policy, self.max_len = memory_tokens, policy, max_len
        self.name = f"orca-{policy}"
        self.ranges: list[tuple[int, int, int]] = []  # (start, size, rid), sorted by start

    def reserve_size(self, req: Request) -> int:
        if self.policy == "max":
            return self.max_len
        if self.policy == "pow2":
            return 1 << (req.final_len - 1).bit_length()
        return req.final_len

    def gaps(self) -> list[tuple[int, int]]:
        """Free ranges ``(start, size)`` in address order."""
        out, pos = [], 0
        for start, size, _ in self.ranges:
            if start > pos:
                out.append((pos, start - pos))
            pos = start + size
        if pos < self.memory_tokens:
            out.append((pos, self.memory_tokens - pos))
        return out

    def num_free(self) -> int:
        return self.memory_tokens - sum(size for _, size, _ in self.ranges)

    def admit(self, live: _Live) -> bool:
        need = self.reserve_size(live.req)
        for start, size in self.gaps():  # first fit: the lowest gap that is large enough
            if size >= need:
                self.ranges.append((start, need, live.req.rid))
                self.ranges.sort()
                return True
        return False

    def grow(self, live: _Live) -> bool:
        return live.num_tokens + 1 <= self.reserve_size(live.req)

    def release(self, live: _Live) -> None:
        self.ranges = [r for r in self.ranges if r[2] != live.req.rid]

    def fits_if_contiguous(self, req: Request) -> bool:
        return self.reserve_size(req) <= self.num_free()

    def breakdown(self, running: list[_Live]) -> dict[str, int]:
        c = dict.fromkeys(CATEGORIES, 0)
        for live in running:
            c["token_states"] += live.num_tokens
            c["reservation"] += live.req.final_len - live.num_tokens
            c["internal_fragmentation"] += self.reserve_size(live.req) - live.req.final_len
        return c

    def slot_map(self, running: list[_Live]) -> tuple[list[int], list[int]]:
        """Per slot: owning request id (-1 free) and state (0 free, 1 token, 2 reserved, 3 never used)."""
        rid = [-1] * self.memory_tokens
        kind = [0] * self.memory_tokens
        by_rid = {live.req.rid: live for live in running}
        for start, size, r in self.ranges:
            live = by_rid[r]
            n, final = live.num_tokens, live.req.final_len
            rid[start : start + size] = [r] * size
            kind[start : start + size] = [1] * n + [2] * (final - n) + [3] * (size - final)
        return rid, kind


class PagedAllocator:
    """The paged baseline: :class:`BlockAllocator` blocks of ``block_size`` slots, on demand."""

    name = "paged"

    def __init__(self, memory_tokens: int, block_size: int = 16):
        self.block_size = block_size
        self.memory_tokens = (memory_tokens // block_size) * block_size
        self.alloc = BlockAllocator(memory_tokens // block_size, block_size)

    def admit(self, live: _Live) -> bool:
        if not self.alloc.can_allocate(live.num_tokens):
            return False
        self.alloc.allocate(live.req.rid, [0] * live.num_tokens)
        return True

    def grow(self, live: _Live) -> bool:
        try:
            self.alloc.append(live.req.rid, 0)
        except OutOfBlocks:
            return False
        return True

    def release(self, live: _Live) -> None:
        self.alloc.free(live.req.rid)

    def fits_if_contiguous(self, req: Request) -> bool:
        return False  # paging needs no contiguity: free blocks are never "external" waste

    def breakdown(self, running: list[_Live]) -> dict[str, int]:
        c = dict.fromkeys(CATEGORIES, 0)
        bs = self.block_size
        for live in running:
            n = live.num_tokens
            empty = cdiv(n, bs) * bs - n
            future = min(empty, live.req.final_len - n)
            c["token_states"] += n
            c["reservation"] += future
            c["internal_fragmentation"] += empty - future
        return c

    def slot_map(self, running: list[_Live]) -> tuple[list[int], list[int]]:
        bs = self.block_size
        rid = [-1] * self.memory_tokens
        kind = [0] * self.memory_tokens
        for live in running:
            n, final = live.num_tokens, live.req.final_len
            for i, block in enumerate(self.alloc.block_table(live.req.rid)):
                for off in range(bs):
                    pos, slot = i * bs + off, block * bs + off
                    rid[slot] = live.req.rid
                    kind[slot] = 1 if pos < n else 2 if pos < final else 3
        return rid, kind


def make_allocator(name: str, memory_tokens: int, block_size: int = 16, max_len: int = 2048):
    """``"paged"``, ``"orca-max"``, ``"orca-pow2"`` or ``"orca-oracle"`` over ``memory_tokens`` slots."""
    if name == "paged":
        return PagedAllocator(memory_tokens, block_size)
    if name.startswith("orca-"):
        return ContiguousAllocator(memory_tokens, name.removeprefix("orca-"), max_len)
    raise ValueError(f"unknown allocator {name!r}: paged, orca-max, orca-pow2 or orca-oracle")


# ------------------------------------------------------------------------------- simulation
@dataclass
class SimResult:
    """What :func:`simulate` measured. Shares are fractions of KV memory, averaged over the
    steps where the queue's head waited for memory (``blocked_steps``)."""

    allocator: str
    memory_tokens: int
    shares: dict[str, float]
    blocked_steps: int
    steps: int
    finished: int
    preemptions: int
    mean_concurrent: float  # running requests per step, over blocked steps
    max_concurrent: int
    throughput: float  # finished requests per step
    frames: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in ("frames", "shares")}
        return {**row, **self.shares}


def simulate(trace: list[Request], allocator: str | ContiguousAllocator | PagedAllocator,
             memory_tokens: int = 16384, *, block_size: int = 16, max_len: int = 2048,
             step_time: float = 0.025, max_num_seqs: int = 256, max_steps: int | None = None,
             frame_every: int = 0, max_frames: int = 60) -> SimResult:
    """Serve ``trace`` with FCFS admission and one decode token per running request per step.

    A request enters when its allocator can place its prompt (contiguous: its whole
    reservation), then grows by one token a step until ``prompt_len + output_len``. A paged
    append that finds no free block preempts the most recently admitted request (recompute,
    as vLLM does): it is freed and goes back to the head of the queue. ``step_time`` maps
    trace seconds to decode steps. With ``frame_every`` > 0 every k-th step's slot map is
    kept in ``frames`` for drawing.
    """
    alloc = allocator if not isinstance(allocator, str) else make_allocator(allocator, memory_tokens, block_size, max_len)
    mem = alloc.memory_tokens
    pending = deque(sorted(trace, key=lambda r: r.arrival))
    waiting: deque[_Live] = deque()
    running: list[_Live] = []
    sums = dict.fromkeys(CATEGORIES, 0.0)
    blocked = steps = finished = preemptions = max_conc = 0
    conc_sum = 0
    frames: list[dict[str, Any]] = []
    while pending or waiting or running:
        now = steps * step_time
        while pending and pending[0].arrival <= now:
            waiting.append(_Live(pending.popleft()))
        while waiting and len(running) < max_num_seqs and alloc.admit(waiting[0]):
            running.append(waiting.popleft())
        if waiting and not running:
            raise ValueError(f"request {waiting[0].req.rid} can never fit in {mem} slots")
        max_conc = max(max_conc, len(running))
        if waiting and len(running) < max_num_seqs:  # the head waits for memory: measure
            c = alloc.breakdown(running)
            free = mem - c["token_states"] - c["reservation"] - c["internal_fragmentation"]
            key = "external_fragmentation" if alloc.fits_if_contiguous(waiting[0].req) else "free"
            c[key] += free
            for k in CATEGORIES:
                sums[k] += c[k] / mem
            blocked += 1
            conc_sum += len(running)
        if frame_every and steps % frame_every == 0 and len(frames) < max_frames:
            rid, kind = alloc.slot_map(running)
            ext = bool(waiting) and alloc.fits_if_contiguous(waiting[0].req)  # free slots it cannot use
            frames.append({"step": steps, "rid": rid, "kind": kind, "waiting": len(waiting), "external": ext})
        i = 0
        while i < len(running):  # decode: one token each, in admission order
            live = running[i]
            while not alloc.grow(live):
                victim = running.pop()
                alloc.release(victim)
                victim.generated = 0
                waiting.appendleft(victim)
                preemptions += 1
                if victim is live:
                    break
            else:
                live.generated += 1
                if live.generated >= live.req.output_len:
                    alloc.release(live)
                    running.pop(i)
                    finished += 1
                    continue
                i += 1
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    shares = {k: (v / blocked if blocked else 0.0) for k, v in sums.items()}
    return SimResult(getattr(alloc, "name", type(alloc).__name__), mem, shares, blocked, steps, finished,
                     preemptions, conc_sum / blocked if blocked else 0.0, max_conc, finished / max(steps, 1),
                     frames)


def compare_allocators(trace: list[Request], memory_tokens: int = 16384, block_size: int = 16,
                       max_len: int = 2048, names=("orca-max", "orca-pow2", "orca-oracle", "paged"),
                       **kw) -> dict[str, SimResult]:
    """Run :func:`simulate` for each allocator over the same trace and memory (Fig. 2)."""
    return {n: simulate(trace, n, memory_tokens, block_size=block_size, max_len=max_len, **kw) for n in names}


def block_size_sweep(trace: list[Request], memory_tokens: int = 16384,
                     block_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256), **kw) -> list[dict[str, Any]]:
    """Paged serving at several block sizes: waste in the last block vs block-table size.

    Small blocks waste little (< one block per sequence) but need long block tables (more
    metadata and more, smaller memory reads in the kernel); large blocks do the opposite.
    """
    rows = []
    for bs in block_sizes:
        r = simulate(trace, "paged", memory_tokens, block_size=bs, **kw)
        mean_tokens = r.shares["token_states"] * r.memory_tokens / max(r.mean_concurrent, 1e-9)
        rows.append({
            "block_size": bs,
            "last_block_waste": r.shares["internal_fragmentation"] + r.shares["reservation"],
            "token_states": r.shares["token_states"],
            "mean_concurrent": r.mean_concurrent,
            "table_entries_per_seq": mean_tokens / bs,
            "num_blocks": r.memory_tokens // bs,
            "throughput": r.throughput,
        })
    return rows


# ------------------------------------------------------------------------------- sharing
def _parallel_group(alloc: BlockAllocator, req: Request, n: int) -> tuple[float, float]:
    """n samples of one prompt: (sum of used blocks, sum of unshared blocks) over decode steps."""
    ids = [(req.rid, 0)]
    alloc.allocate(ids[0], [0] * req.prompt_len)
    for j in range(1, n):
        alloc.fork(ids[0], (req.rid, j))
        ids.append((req.rid, j))
    shared = unshared = 0.0
    bs = alloc.block_size
    for step in range(req.output_len):
        for j, s in enumerate(ids):
            alloc.append(s, step * n + j)  # distinct tokens: samples diverge at once
        shared += alloc.num_used_blocks
        unshared += n * cdiv(req.prompt_len + step + 1, bs)
    for s in ids:
        alloc.free(s)
    return shared, unshared


def _beam_group(alloc: BlockAllocator, req: Request, k: int, rng: random.Random,
                keep: float) -> tuple[float, float]:
    """Beam search of width k. Each step every new beam extends a current beam drawn with
    probability proportional to ``keep ** rank`` (rank 0 = best), so strong beams spawn
    several children and weak ones die: sharing grows along common ancestors."""
    alloc.allocate((req.rid, 0, 0), [0] * req.prompt_len)
    beams = [(req.rid, 0, 0)]
    for j in range(1, k):
        alloc.fork(beams[0], (req.rid, 0, j))
        beams.append((req.rid, 0, j))
    shared = unshared = 0.0
    bs = alloc.block_size
    weights = [keep ** r for r in range(k)]
    for step in range(1, req.output_len + 1):
        parents = sorted(rng.choices(range(k), weights=weights, k=k))
        new = [(req.rid, step, j) for j in range(k)]
        for j, p in enumerate(parents):
            alloc.fork(beams[p], new[j])
        for b in beams:
            alloc.free(b)
        for j, b in enumerate(new):
            alloc.append(b, step * k + j)
        beams = new
        shared += alloc.num_used_blocks
        unshared += k * cdiv(req.prompt_len + step, bs)
    for b in beams:
        alloc.free(b)
    return shared, unshared


def sharing_savings(trace: list[Request], mode: str = "parallel", n: int = 4, block_size: int = 16,
                    keep: float = 0.5, seed: int = 0, max_requests: int = 200) -> dict[str, Any]:
    """Memory saved by sharing KV blocks (paper §6.3): 1 - used blocks / blocks without sharing.

    ``mode`` is ``"parallel"`` (n samples of one prompt share its blocks, copy-on-write at the
    first divergent token) or ``"beam"`` (width n; see ``_beam_group`` for the parent model,
    whose skew ``keep`` is our assumption, not the paper's). Averaged over every decode step
    of up to ``max_requests`` requests, each served alone.
    """
    rng = random.Random(seed)
    shared = unshared = 0.0
    cow = 0
    for req in trace[:max_requests]:
        need = n * cdiv(req.final_len + 1, block_size) * 2 + 4
        alloc = BlockAllocator(need, block_size)
        if mode == "parallel":
            s, u = _parallel_group(alloc, req, n)
        elif mode == "beam":
            s, u = _beam_group(alloc, req, n, rng, keep)
        else:
            raise ValueError(f"mode must be 'parallel' or 'beam', got {mode!r}")
        shared, unshared, cow = shared + s, unshared + u, cow + alloc.stats["cow_copies"]
    return {"mode": mode, "n": n, "block_size": block_size, "saving": 1 - shared / unshared,
            "cow_copies": cow, "requests": min(len(trace), max_requests)}


def prefix_sharing(num_requests: int = 64, system_prompt_len: int = 500, user_len_mean: int = 40,
                   block_size: int = 16, num_blocks: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Requests that share a system prompt, with and without prefix caching (all kept live).

    Returns the prefix-cache hit rate (cached prompt tokens / prompt tokens), the blocks used
    either way and the share of memory saved.
    """
    rng = random.Random(seed)
    system = [rng.randrange(1000, 30000) for _ in range(system_prompt_len)]
    prompts = [system + [rng.randrange(1000, 30000) for _ in range(max(1, round(rng.expovariate(1 / user_len_mean))))]
               for _ in range(num_requests)]
    used = {}
    for cached in (False, True):
        a = BlockAllocator(num_blocks, block_size, enable_prefix_caching=cached)
        for i, p in enumerate(prompts):
            a.allocate(i, p)
        used[cached] = a.num_used_blocks
        stats = a.stats
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "num_requests": num_requests, "system_prompt_len": system_prompt_len, "block_size": block_size,
        "prompt_tokens": prompt_tokens, "hit_tokens": stats["prefix_hit_tokens"],
        "hit_rate": stats["prefix_hit_tokens"] / prompt_tokens,
        "blocks_without_caching": used[False], "blocks_with_caching": used[True],
        "memory_saved": 1 - used[True] / used[False],
    }


def format_fig2(results: dict[str, SimResult]) -> str:
    """A text table of :func:`compare_allocators` results beside the paper's Fig. 2 token states."""
    rows = [("token states (ours)", lambda n, r: f"{100 * r.shares['token_states']:.1f}%"),
            ("token states (paper)", lambda n, r: f"{100 * PAPER_FIG2_TOKEN_STATES[n]:.1f}%"
             if n in PAPER_FIG2_TOKEN_STATES else "-"),
            ("reservation", lambda n, r: f"{100 * r.shares['reservation']:.1f}%"),
            ("internal fragmentation", lambda n, r: f"{100 * r.shares['internal_fragmentation']:.1f}%"),
            ("external fragmentation", lambda n, r: f"{100 * r.shares['external_fragmentation']:.1f}%"),
            ("free", lambda n, r: f"{100 * r.shares['free']:.1f}%"),
            ("requests running (mean)", lambda n, r: f"{r.mean_concurrent:.1f}"),
            ("requests running (max)", lambda n, r: str(r.max_concurrent))]
    lines = [f"{'':24s}" + "".join(f"{n:>13s}" for n in results)]
    for label, cell in rows:
        lines.append(f"{label:24s}" + "".join(f"{cell(n, r):>13s}" for n, r in results.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m inferlab.memsim [--write-traces]``: print Fig. 2 and §6.3, ours beside the paper's."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m inferlab.memsim", description=main.__doc__)
    p.add_argument("--write-traces", action="store_true", help="regenerate data/traces/ (fixed seeds)")
    p.add_argument("--memory-tokens", type=int, default=16384)
    p.add_argument("--num-requests", type=int, default=1000)
    args = p.parse_args(argv)
    if args.write_traces:
        for path in write_default_traces():
            print(f"wrote {path}")
        return 0
    results = compare_allocators(load_trace("sharegpt")[: args.num_requests], args.memory_tokens)
    print(f"Fig. 2 (ShareGPT-like, {args.memory_tokens} KV slots)\n" + format_fig2(results))
    alpaca = load_trace("alpaca")
    for mode in ("parallel", "beam"):
        lo, hi = PAPER_SHARING_SAVINGS_ALPACA[mode]
        ours = ", ".join(f"n={n}: {100 * sharing_savings(alpaca, mode, n)['saving']:.1f}%" for n in (2, 4, 6))
        print(f"§6.3 {mode:8s} saving, ours: {ours}; paper: {100 * lo:.1f}%-{100 * hi:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
