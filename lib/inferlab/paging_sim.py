"""The allocators' memory simulator: contiguous reservation vs paging over request traces.

Reproduces, in miniature, the measurements that motivate PagedAttention (Kwon et al.,
"Efficient Memory Management for Large Language Model Serving with PagedAttention",
SOSP 2023): Fig. 2 (how much KV memory holds token states under each allocator), the
block-size trade-off, and §6.3 (memory saved by sharing blocks in parallel sampling and
beam search). ``python -m inferlab.bench paging`` prints ours beside the paper's.

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

The traces served here are lists of :class:`inferlab.bench.workloads.TraceEntry`
(made by :func:`inferlab.bench.workloads.generate_trace`, stored in data/traces/).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from inferlab.bench.workloads import TraceEntry
from inferlab.paging import BlockAllocator, OutOfBlocks, cdiv, slot_for

__all__ = [
    "CATEGORIES",
    "PAPER_FIG2_TOKEN_STATES",
    "PAPER_SHARING_SAVINGS_ALPACA",
    "ContiguousAllocator",
    "PagedAllocator",
    "SimResult",
    "block_size_sweep",
    "compare_allocators",
    "format_fig2",
    "make_allocator",
    "prefix_sharing",
    "sharing_savings",
    "simulate",
]

CATEGORIES = ("token_states", "reservation", "internal_fragmentation", "external_fragmentation", "free")

# ------------------------------------------------------------------ the paper's published numbers
# Kwon et al., SOSP 2023. Everything this module compares against lives here and nowhere else.

# Fig. 2: share of KV-cache memory holding token states (OPT-13B, A100, ShareGPT-like serving
# experiment of §6.2). The other bar segments are not transcribed here.
PAPER_FIG2_TOKEN_STATES = {"orca-max": 0.204, "orca-pow2": 0.268, "orca-oracle": 0.382, "paged": 0.963}

# §6.3 / Fig. 15 (Alpaca trace, OPT-13B): memory saved by sharing KV blocks, lowest and
# highest over 2, 4 and 6 parallel samples or beam width 2, 4 and 6.
PAPER_SHARING_SAVINGS_ALPACA = {"parallel": (0.061, 0.098), "beam": (0.376, 0.552)}


# ------------------------------------------------------------------------------- allocators
@dataclass
class _Live:
    req: TraceEntry
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

    def reserve_size(self, req: TraceEntry) -> int:
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

    def fits_if_contiguous(self, req: TraceEntry) -> bool:
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

    def fits_if_contiguous(self, req: TraceEntry) -> bool:
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
            table = self.alloc.block_table(live.req.rid)
            for pos in range(len(table) * bs):
                slot = slot_for(table, pos, bs)
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


@dataclass
class _Serving:
    """The simulator's state: the queues and what has been counted so far."""

    alloc: Any
    pending: deque
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    sums: dict = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    blocked: int = 0
    steps: int = 0
    finished: int = 0
    preemptions: int = 0
    max_conc: int = 0
    conc_sum: int = 0
    frames: list = field(default_factory=list)


def _admit(s: _Serving, now: float, max_num_seqs: int) -> None:
    """Arrivals join the queue; FCFS admission while the head's prompt can be placed."""
    while s.pending and s.pending[0].arrival <= now:
        s.waiting.append(_Live(s.pending.popleft()))
    while s.waiting and len(s.running) < max_num_seqs and s.alloc.admit(s.waiting[0]):
        s.running.append(s.waiting.popleft())
    if s.waiting and not s.running:
        raise ValueError(f"request {s.waiting[0].req.rid} can never fit in {s.alloc.memory_tokens} slots")
    s.max_conc = max(s.max_conc, len(s.running))


def _measure(s: _Serving) -> None:
    """The head waits for memory: split KV memory into the paper's categories."""
    mem = s.alloc.memory_tokens
    c = s.alloc.breakdown(s.running)
    free = mem - c["token_states"] - c["reservation"] - c["internal_fragmentation"]
    c["external_fragmentation" if s.alloc.fits_if_contiguous(s.waiting[0].req) else "free"] += free
    for k in CATEGORIES:
        s.sums[k] += c[k] / mem
    s.blocked += 1
    s.conc_sum += len(s.running)


def _record_frame(s: _Serving) -> None:
    rid, kind = s.alloc.slot_map(s.running)
    ext = bool(s.waiting) and s.alloc.fits_if_contiguous(s.waiting[0].req)  # free slots it cannot use
    s.frames.append({"step": s.steps, "rid": rid, "kind": kind, "waiting": len(s.waiting), "external": ext})


def _decode(s: _Serving) -> None:
    """One token for each running request, in admission order; a paged append that finds no
    free block preempts the most recently admitted request (recompute, as vLLM does)."""
    i = 0
    while i < len(s.running):
        live = s.running[i]
        while not s.alloc.grow(live):
            victim = s.running.pop()
            s.alloc.release(victim)
            victim.generated = 0
            s.waiting.appendleft(victim)
            s.preemptions += 1
            if victim is live:
                break
        else:
            live.generated += 1
            if live.generated >= live.req.output_len:
                s.alloc.release(live)
                s.running.pop(i)
                s.finished += 1
                continue
            i += 1


def _result(s: _Serving) -> SimResult:
    b = s.blocked
    shares = {k: (v / b if b else 0.0) for k, v in s.sums.items()}
    return SimResult(getattr(s.alloc, "name", type(s.alloc).__name__), s.alloc.memory_tokens, shares, b, s.steps,
                     s.finished, s.preemptions, s.conc_sum / b if b else 0.0, s.max_conc,
                     s.finished / max(s.steps, 1), s.frames)


def simulate(trace: list[TraceEntry], allocator: str | ContiguousAllocator | PagedAllocator,
             memory_tokens: int = 16384, *, block_size: int = 16, max_len: int = 2048,
             step_time: float = 0.025, max_num_seqs: int = 256, max_steps: int | None = None,
             frame_every: int = 0, max_frames: int = 60) -> SimResult:
    """Serve ``trace`` with FCFS admission and one decode token per running request per step.

    A request enters when its allocator can place its prompt (contiguous: its whole
    reservation), then grows by one token a step until ``prompt_len + output_len``. A paged
    append that finds no free block preempts the most recently admitted request: it is
    freed and goes back to the head of the queue. ``step_time`` maps trace seconds to decode
    steps. With ``frame_every`` > 0 every k-th step's slot map is kept in ``frames`` for drawing.
    """
    alloc = allocator if not isinstance(allocator, str) else make_allocator(allocator, memory_tokens, block_size, max_len)
    s = _Serving(alloc, deque(sorted(trace, key=lambda r: r.arrival)))
    while s.pending or s.waiting or s.running:
        _admit(s, s.steps * step_time, max_num_seqs)
        if s.waiting and len(s.running) < max_num_seqs:
            _measure(s)
        if frame_every and s.steps % frame_every == 0 and len(s.frames) < max_frames:
            _record_frame(s)
        _decode(s)
        s.steps += 1
        if max_steps is not None and s.steps >= max_steps:
            break
    return _result(s)


def compare_allocators(trace: list[TraceEntry], memory_tokens: int = 16384, block_size: int = 16,
                       max_len: int = 2048, names=("orca-max", "orca-pow2", "orca-oracle", "paged"),
                       **kw) -> dict[str, SimResult]:
    """Run :func:`simulate` for each allocator over the same trace and memory (Fig. 2)."""
    return {n: simulate(trace, n, memory_tokens, block_size=block_size, max_len=max_len, **kw) for n in names}


def block_size_sweep(trace: list[TraceEntry], memory_tokens: int = 16384,
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
def _parallel_group(alloc: BlockAllocator, req: TraceEntry, n: int) -> tuple[float, float]:
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


def _beam_group(alloc: BlockAllocator, req: TraceEntry, k: int, rng: random.Random,
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


def sharing_savings(trace: list[TraceEntry], mode: str = "parallel", n: int = 4, block_size: int = 16,
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
