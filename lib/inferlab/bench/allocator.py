"""``python -m inferlab.bench allocator``: cost of one decode step's block bookkeeping.

Every decode step, a continuous-batching engine calls ``append`` once per running
sequence. With 256 sequences that bookkeeping sits on the critical path of every step,
so it must stay far below a forward pass (goal: <= 1 ms for 256 appends in CPython).
Measured for plain paging, with prefix caching (a block fills and is hashed every
``block_size`` steps) and for forked sequences where every append is a copy-on-write.
"""

from __future__ import annotations

import argparse
import random
import statistics

from inferlab.paging import BlockAllocator


def _setup(num_seqs: int, block_size: int, prefix: bool, fork: bool, seed: int) -> BlockAllocator:
    rng = random.Random(seed)
    a = BlockAllocator(num_blocks=num_seqs * 80, block_size=block_size, enable_prefix_caching=prefix)
    for i in range(num_seqs // 2 if fork else num_seqs):
        n = rng.randint(64, 1024)
        if fork:  # partly filled last block, shared: the next append copies it
            n += 1 if n % block_size == 0 else 0
        a.allocate(i, [rng.randrange(32000) for _ in range(n)])
        if fork:
            a.fork(i, num_seqs // 2 + i)
    return a


def _append_all(a: BlockAllocator, ids: list, steps: int) -> None:
    for step in range(steps):
        for seq_id in ids:
            a.append(seq_id, step)


def time_appends(num_seqs: int = 256, block_size: int = 16, prefix: bool = False, fork: bool = False,
                 steps: int = 16, repeats: int = 20, seed: int = 0) -> dict:
    """Seconds for one ``append`` on each of ``num_seqs`` sequences (``steps`` steps in a row, per step).

    Each repeat times a freshly built allocator (:func:`inferlab.device.time_fn`, one call).
    With ``fork`` only the first step is timed: it copies every shared block; later steps
    write in place.
    """
    from inferlab.device import time_fn

    timed_steps = 1 if fork else steps
    per_step = []
    for r in range(repeats):
        a = _setup(num_seqs, block_size, prefix, fork, seed + r)
        ids = list(a.seqs)
        per_step.append(time_fn(lambda: _append_all(a, ids, timed_steps), "cpu", repeats=1, warmup=0)[0] / timed_steps)  # noqa: B023
    return {
        "num_seqs": num_seqs, "block_size": block_size, "prefix_caching": prefix, "fork_cow": fork,
        "median_ms_per_step": 1e3 * statistics.median(per_step),
        "min_ms_per_step": 1e3 * min(per_step),
        "us_per_append": 1e6 * statistics.median(per_step) / num_seqs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferlab.bench allocator", description=__doc__.splitlines()[0])
    p.add_argument("--num-seqs", type=int, default=256)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    cases = [dict(prefix=False, fork=False), dict(prefix=True, fork=False), dict(prefix=False, fork=True)]
    rows = [time_appends(args.num_seqs, args.block_size, repeats=args.repeats, **c) for c in cases]
    goal_ms = 1.0
    for row in rows:
        label = "prefix caching" if row["prefix_caching"] else "fork + copy-on-write" if row["fork_cow"] else "plain"
        ok = "meets" if row["median_ms_per_step"] <= goal_ms else "misses"
        print(f"{label:22s} {row['num_seqs']} appends: {row['median_ms_per_step']:.3f} ms "
              f"({row['us_per_append']:.2f} us each) - {ok} the {goal_ms} ms goal")
    if not args.no_save:
        from inferlab.bench import save_result

        path = save_result(
            "allocator", {"goal_ms_per_step": goal_ms, "results": rows})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
