"""Running the engine over several processes: rank 0 schedules, the workers follow each step.

``LLM(model, tensor_parallel_size=N)`` keeps the whole engine (scheduler, block manager,
sampling) in the calling process, which is rank 0, and starts ``N - 1`` worker processes.
Every rank builds the same model, keeps its shard (:func:`inferlab.tp.shard_model`) and
its own KV pool of its KV heads; the block tables are the same on every rank, because only
rank 0 schedules. Each step rank 0 sends the step's inputs (the flattened chunks) to every
worker, then all ranks run the same forward pass, meeting in the all-reduces of
:mod:`inferlab.tp` over ``torch.distributed`` (gloo on CPU, NCCL on GPUs); the logits are
identical everywhere and only rank 0 samples. This is nano-vllm's split (its rank 0 writes
the call into shared memory and wakes the workers with events); here the step travels over
one ``multiprocessing`` pipe per worker, so an idle worker waits on its pipe, not inside a
collective that would time out.
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from datetime import timedelta
from typing import Any

import torch

from inferlab.engine.config import EngineConfig
from inferlab.engine.model_runner import ChunkInput, ModelRunner

log = logging.getLogger(__name__)
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
DIAGNOSE_ENV = "INFERLAB_DIAGNOSE"  # seconds: stack dumps and progress logs in every rank (see diagnose)


def free_port() -> int:
    """A TCP port nobody listens on now (for the rendezvous on localhost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def init_process_group(rank: int, size: int, port: int, device: str) -> None:
    """Join the ``size`` ranks on localhost (on a GPU, rank ``r`` takes ``cuda:r``)."""
    import torch.distributed as dist

    if str(device).startswith("cuda"):
        torch.cuda.set_device(rank)
    dist.init_process_group(backend_for(device), init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size, timeout=COLLECTIVE_TIMEOUT)


def rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if str(device).startswith("cuda") else str(device)


def diagnose(label: str) -> bool:
    """Behind ``INFERLAB_DIAGNOSE=S``: let this process say where it is, for hangs across ranks.

    A rank stuck in a collective its peer never joins, or a worker waiting on its pipe, prints
    nothing. With the variable set (workers inherit it), each process prints every thread's
    Python stack every ``S`` seconds and on SIGUSR1 (``timeout -s USR1`` reaches the whole
    process group), and logs the runner's steps (graph capture per batch) at INFO on stderr.
    The stacks go to ``$INFERLAB_DIAGNOSE_DIR/stacks-<label>.txt`` when that is set (one file
    per rank, appended, so two ranks' dumps do not interleave), else to stderr.
    """
    import faulthandler
    import signal
    import sys
    import time

    seconds = float(os.environ.get(DIAGNOSE_ENV, "0") or 0)
    if seconds <= 0:
        return False
    folder, out = os.environ.get(DIAGNOSE_ENV + "_DIR"), sys.stderr
    if folder:
        out = open(os.path.join(folder, f"stacks-{label.replace(' ', '')}.txt"), "a", buffering=1)  # noqa: SIM115
        _DIAGNOSE_FILES.append(out)  # faulthandler writes to its descriptor: keep it open
        print(f"== {label}, pid {os.getpid()}, started {time.strftime('%H:%M:%S')}", file=out)
    faulthandler.register(signal.SIGUSR1, file=out, all_threads=True)
    faulthandler.dump_traceback_later(seconds, repeat=True, file=out)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {label} pid {os.getpid()} %(name)s: %(message)s")
    log.info("Python stacks every %g s and on SIGUSR1 to %s", seconds, getattr(out, "name", out))
    return True


_DIAGNOSE_FILES: list = []


class TPModelRunner(ModelRunner):
    """A :class:`ModelRunner` holding rank ``rank``'s shard; on rank 0 it also drives the workers.

    ``execute``, ``copy_block`` and ``reference_logits`` on rank 0 first send the call to every
    worker (through ``conns``), so that all ranks run the same step.
    """

    def __init__(self, model: Any, config: EngineConfig, rank: int = 0, conns: list | None = None):
        self.rank, self.tp_size, self.conns = rank, config.tensor_parallel_size, conns or []
        self.procs: list = []
        super().__init__(model, config)

    def _build_model(self, source, config: EngineConfig) -> torch.nn.Module:
        """The whole model (loaded or seeded: the same on every rank), then this rank's shard of it."""
        from inferlab.tp import shard_model

        return shard_model(super()._build_model(source, config), self.rank, self.tp_size)

    # ---- rank 0: every call that runs the model or changes the cache goes to all ranks
    def call(self, name: str, *args: Any, reply: bool = False) -> Any:
        """Run ``name(*args)`` on every rank; with ``reply``, return every rank's result (rank 0 first)."""
        dead = [p for p in self.procs if not p.is_alive()]
        if dead:  # a collective with a missing rank would wait until the timeout
            raise RuntimeError(f"tensor-parallel worker {dead[0].name} has exited (code {dead[0].exitcode})")
        for conn in self.conns:
            conn.send((name, args, reply))
        mine = getattr(self, "_local_" + name, None) or getattr(ModelRunner, name).__get__(self)
        result = mine(*args)
        if not reply:
            return result
        return [result] + [_receive(conn) for conn in self.conns]

    def execute(self, chunks: list[ChunkInput]) -> torch.Tensor:
        return self.call("execute", chunks)

    def copy_block(self, src: int, dst: int) -> None:
        self.call("copy_block", src, dst)

    def reference_logits(self, token_ids: list[int]) -> torch.Tensor:
        return self.call("reference_logits", token_ids)

    # ---- introspection, run on every rank with ``call(..., reply=True)``
    def _local_kv_cache_bytes(self) -> int:
        """Bytes of this rank's KV pool."""
        return self.kv_cache.nbytes()

    def _local_meter_start(self) -> None:
        from inferlab import tp

        self._meter_cm = tp.count_all_reduce()
        self._meter = self._meter_cm.__enter__()

    def _local_meter_stop(self) -> tuple[int, int]:
        """(all-reduce calls, payload bytes) since :meth:`_local_meter_start`."""
        self._meter_cm.__exit__(None, None, None)
        return self._meter.calls, self._meter.bytes

    def serve(self, conn) -> None:
        """A worker's loop: run each call rank 0 sends, until ``exit``."""
        while True:
            name, args, reply = conn.recv()
            if name == "exit":
                return
            try:
                result = getattr(self, "_local_" + name, None) or getattr(ModelRunner, name).__get__(self)
                out = result(*args)
                if reply:
                    conn.send(("ok", out))
            except Exception as err:  # report, then stop: rank 0 cannot continue without this rank
                conn.send(("error", f"rank {self.rank}: {type(err).__name__}: {err}"))
                raise

    def shutdown(self) -> None:
        """Stop the workers and leave the process group (also run when the runner is garbage-collected)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
            self.graphs = None  # freed by the finalizer (before the group was destroyed)


def _receive(conn) -> Any:
    status, value = conn.recv()
    if status == "error":
        raise RuntimeError(value)
    return value


# --------------------------------------------------------------------------- starting and stopping
def start_tensor_parallel(model: Any, config: EngineConfig) -> TPModelRunner:
    """Start ``tensor_parallel_size - 1`` worker processes and return rank 0's runner (this process).

    ``model`` must be picklable: a name, folder, hub id or config (every rank loads it itself).
    """
    import multiprocessing as mp

    from inferlab.device import pick_device
    from inferlab.engine.loader import resolve_source
    from inferlab.tp import check_shardable

    size = config.tensor_parallel_size
    check_shardable(resolve_source(model).config, size)  # fail before any process starts
    device = pick_device(config.device)
    if device.startswith("cuda") and torch.cuda.device_count() < size:
        raise ValueError(f"tensor_parallel_size={size} needs {size} GPUs, torch sees {torch.cuda.device_count()}")
    config = EngineConfig.from_kwargs(config, device=device)
    port, ctx = free_port(), mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(1, size)]
    procs = [ctx.Process(target=_worker, args=(rank, port, model, config, child), daemon=True)
             for rank, (_, child) in enumerate(pipes, start=1)]
    for p in procs:
        p.start()
    conns = [parent for parent, _ in pipes]
    try:
        init_process_group(0, size, port, device)
        log.info("rank 0 joined the process group of %d; building its runner", size)
        runner = TPModelRunner(model, EngineConfig.from_kwargs(config, device=rank_device(device, 0)), 0, conns)
        log.info("rank 0 runner built; waiting for the workers to say they are ready")
        for conn in conns:
            _receive(conn)  # each worker says it is ready (or why it is not)
    except BaseException:
        _stop(conns, procs)
        raise
    runner.procs = procs
    graphs = runner.graphs.graphs if runner.graphs is not None else {}  # not the runner: finalize must not hold it
    runner._finalizer = weakref.finalize(runner, _stop, conns, procs, graphs)
    return runner


def _worker(rank: int, port: int, model: Any, config: EngineConfig, conn) -> None:
    """A worker process: join the group, build this rank's shard, then follow rank 0's calls."""
    diagnose(f"rank {rank}")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.tensor_parallel_size))
    try:
        init_process_group(rank, config.tensor_parallel_size, port, config.device)
        log.info("rank %d joined the process group; building its runner", rank)
        runner = TPModelRunner(model, EngineConfig.from_kwargs(config, device=rank_device(config.device, rank)), rank)
    except Exception as err:
        conn.send(("error", f"rank {rank}: {type(err).__name__}: {err}"))
        raise
    conn.send(("ok", None))
    log.info("rank %d ready, serving rank 0's calls", rank)
    try:
        runner.serve(conn)
    finally:
        _release_graphs(runner.graphs.graphs if runner.graphs is not None else {})
        log.info("rank %d leaving the process group", rank)
        log.info("rank %d %s", rank, "left" if _leave_group() else "could not leave the group in time")


def _stop(conns: list, procs: list, graphs: dict | None = None) -> None:
    """Tell the workers to exit, leave the group together with them, then wait for them (kill the ones that hang).

    NCCL's communicator teardown is collective (every rank destroys it at about the same time;
    vLLM PR #39846), and it waits until every CUDA graph that captured one of its collectives
    is freed. So rank 0 frees its decode graphs and leaves the group while the workers do the
    same, and only then joins them. Joining first left a worker waiting in its teardown for
    rank 0 and, once it was killed, rank 0 waiting for it (the hang of the H200 run of 2026-11-30).
    """
    for conn in conns:
        try:
            conn.send(("exit", (), False))
        except (OSError, ValueError):
            pass
    _release_graphs(graphs or {})
    if not _leave_group(timeout=30.0 if all(p.is_alive() for p in procs) else 5.0):
        log.warning("rank 0 could not leave the process group in time (a worker gone?): left as it is")
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            log.warning("worker %s did not exit within 10 s: killed", p.name)
            p.kill()
            p.join()
    log.info("workers stopped")


def _release_graphs(graphs: dict) -> None:
    """Free captured CUDA graphs (their NCCL collectives hold the communicator) before it is destroyed."""
    if not graphs:
        return
    for graph in graphs.values():
        graph.reset()
    graphs.clear()
    torch.cuda.synchronize()


def _leave_group(timeout: float | None = None) -> bool:
    """Destroy this process's group (if any); with ``timeout``, give up after that many seconds.

    The destroy runs in a daemon thread so that a rank whose peer is gone does not wait forever in
    a collective teardown; True when the group was left.
    """
    import threading

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    if timeout is None:
        dist.destroy_process_group()
        return True
    worker = threading.Thread(target=dist.destroy_process_group, name="leave-process-group", daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()
