"""Quantization benchmark: what each format costs in bytes, what it does to quality, how fast it decodes.

``python -m inferlab.bench quant [--device cuda] [--shapes llama-3-8b,llama-3.2-1b] [--quick] [--out DIR]``

Two tables, one run:

- **quality** (the embedded model, or ``--model``): for full precision, our int8 (absmax and
  zero-point), int4 RTN, NF4, GPTQ and AWQ, bitsandbytes' LLM.int8() and NF4, and GGUF
  Q8_0/Q4_0 read back through transformers: weight bytes as stored, held-out perplexity, and
  ``generate`` tokens/s at batch 1 and 32 (transformers' loop, the path a user runs).
- **decode** (``--shapes``, random weights in bf16 on CUDA): one decode step of the engine
  (:class:`EngineStep`: its paged KV cache, attention kernel, fused norm/RoPE/activation), captured
  as a CUDA graph, at batch 1 and 32 with 128 tokens in each sequence's cache, with its linear
  layers in bf16, in our int8 and int4 (Triton dequantize-matmul), and in bitsandbytes' 8-bit
  and NF4, so the time is the time to read the weights and not Python's.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from inferlab.bench import save_result

QUALITY_METHODS = ("int8", "int8-zp", "int4", "nf4", "gptq", "awq")
CONTEXT = 128  # tokens already in each sequence's cache when the timed decode step runs


# ------------------------------------------------------------------ a graphable decode step
class EngineStep:
    """One decode step of the engine's own forward: ``batch`` sequences at position ``context``.

    The engine's paged KV cache, attention backend (the Triton paged-decode kernel on CUDA) and
    fused norm, RoPE and activation kernels, over ``model`` (the runner's, or a copy with its
    linears swapped). Every input is a fixed tensor (each sequence owns its blocks), so the step
    can be captured as a CUDA graph, as the engine's ``DecodeGraphs`` does.
    """

    def __init__(self, runner, batch: int, context: int = CONTEXT, model=None):
        from inferlab.bench.engine import decode_chunks
        from inferlab.engine.model_runner import build_metadata

        chunks = decode_chunks(runner, batch, context + 1)  # each row on its own blocks
        self.model, self.batch = model or runner.model, batch
        self.block_tables = [c.block_table for c in chunks]
        self.meta = build_metadata(chunks, runner.block_size, runner.device, slots=not runner.uses_tables,
                                   tables=runner.uses_tables)
        if runner.uses_tables:  # a fixed split of the decode kernel, as inside the engine's graphs
            from inferlab.attention.paged_triton import decode_splits

            self.meta.num_splits = decode_splits(batch, runner.kv_cache.num_kv_heads)
        self.ids = torch.zeros(batch, dtype=torch.long, device=runner.device)
        self.pos = torch.full((batch,), context, dtype=torch.long, device=runner.device)

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """Logits ``[batch, vocab]`` for tokens ``self.ids`` at position ``context``."""
        return self.model.compute_logits(self.model(self.ids, self.pos, self.meta))


def time_step(dec: EngineStep, graphed: bool, iters: int = 30) -> dict:
    """Milliseconds per decode step (median of CUDA-graph replays, or of eager steps)."""
    from inferlab.device import time_cuda_graph, time_fn

    if graphed:
        times = sorted(time_cuda_graph(dec.step, iters))
    else:
        times = sorted(time_fn(dec.step, str(dec.ids.device), repeats=iters, warmup=3))
    ms = 1000 * times[len(times) // 2]
    return {"ms_per_step": ms, "tok_s": dec.batch / ms * 1000, "graphed": graphed,
            "spread_ms": [1000 * times[0], 1000 * times[-1]]}


# ------------------------------------------------------------------ variants of one model
def bnb_swap(model, kind: str):
    """The engine model with every linear layer replaced by bitsandbytes' (``"bnb-int8"`` or ``"bnb-nf4"``)."""
    import bitsandbytes as bnb

    from inferlab.quant.linear import find_linears, swap_modules

    new = {}
    for name, lin in find_linears(model, skip=()).items():
        w, dev = lin.weight.data, lin.weight.device
        if kind == "bnb-int8":
            mod = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False, threshold=6.0)
            mod.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)._quantize(dev)
        else:
            mod = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=w.dtype,
                                    quant_type="nf4", compress_statistics=True)
            mod.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)._quantize(dev)
        new[name] = mod
    swap_modules(model, new)
    return model


def make_variant(base, name: str):
    """A copy of the engine model ``base`` with its linears (LM head included) in format ``name``."""
    from inferlab.quant import quantize

    model = copy.deepcopy(base)
    if name in ("int8", "int4"):
        quantize(model, name, group_size=128, skip=())
    elif name.startswith("bnb-"):
        bnb_swap(model, name)
    elif name != "bf16":
        raise ValueError(f"unknown decode variant {name!r}")
    return model


def weight_bytes(model) -> int:
    from inferlab.quant import model_weight_bytes

    total = model_weight_bytes(model)
    for m in model.modules():  # bitsandbytes keeps its constants outside the parameters
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
        scb = getattr(getattr(m, "weight", None), "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
    return total


def decode_table(shape, device: str, batches=(1, 32), variants=("bf16", "int8", "int4", "bnb-nf4", "bnb-int8"),
                 checkpoint=None) -> list[dict]:
    """Rows ``{shape, variant, batch, weight_bytes, ms_per_step, tok_s, ...}`` for one model shape
    (a config name in data/configs, or a config dict)."""
    from inferlab.configs import load_config
    from inferlab.engine.config import EngineConfig
    from inferlab.engine.model_runner import ModelRunner
    from inferlab.paging import cdiv

    cfg = load_config(shape) if isinstance(shape, str) else dict(shape)
    shape = shape if isinstance(shape, str) else cfg.get("name", "custom")
    runner = ModelRunner(cfg, device=device, dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=max(batches) * cdiv(CONTEXT + 1, EngineConfig.block_size))
    base = runner.model
    rows = []
    for name in variants:
        try:
            model = make_variant(base, name)
        except (ImportError, RuntimeError, ValueError) as err:
            rows.append({"shape": shape, "variant": name, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        wb = weight_bytes(model)
        for b in batches:
            graphed = device.startswith("cuda") and name != "bnb-int8"  # LLM.int8() syncs on its outliers
            rows.append({"shape": shape, "variant": name, "batch": b, "weight_bytes": wb,
                         **_timed(runner, model, b, graphed)})
            print(f"{shape:14s} {name:9s} b={b:<3d} {rows[-1].get('tok_s', float('nan')):9.1f} tok/s", flush=True)
            if checkpoint:
                checkpoint(rows)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _timed(runner, model, batch: int, graphed: bool) -> dict:
    try:
        return time_step(EngineStep(runner, batch, CONTEXT, model), graphed)
    except RuntimeError as err:  # e.g. a kernel that cannot be captured: time it eagerly
        if not graphed:
            raise
        torch.cuda.synchronize()
        return {**time_step(EngineStep(runner, batch, CONTEXT, model), False), "graph_error": str(err)[:200]}


# ------------------------------------------------------------------ quality on a real (small) model
def generate_speed(model, tok, batch: int, new_tokens: int = 32, device: str = "cpu") -> float:
    """Tokens/s of transformers ``generate`` (greedy, exactly ``new_tokens`` each) for ``batch`` prompts."""
    from inferlab.device import time_fn

    ids = tok(["def f(x):\n    return"] * batch, return_tensors="pt").input_ids.to(device)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    seconds = time_fn(lambda: model.generate(ids, **gen), device, repeats=2, warmup=1)
    return batch * new_tokens / min(seconds)


def _variant_model(model_name: str, method: str, device: str, cal_text: str, tmp):
    """``(model, tokenizer, note)`` for one row of the quality table."""
    import inferlab as il
    from inferlab.quant import export_gguf, load_4bit_model, load_8bit_model, load_gguf, quantize

    if method == "bnb-int8":
        return (*load_8bit_model(model_name, device=device), "bitsandbytes LLM.int8()")
    if method in ("bnb-nf4", "bnb-fp4"):
        return (*load_4bit_model(model_name, quant_type=method[4:], double_quant=True, device=device),
                f"bitsandbytes {method[4:].upper()} + double quant")
    model, tok = il.load_model(model_name, device=device)
    if method.startswith("gguf-"):
        path = export_gguf(model, tok, f"{tmp}/{method}.gguf", method[5:])
        loaded, tok = load_gguf(path, device=device, dtype=model.dtype)
        loaded.gguf_file_bytes = path.stat().st_size
        return loaded, tok, "transformers dequantizes GGUF on load: it runs as full precision"
    if method != "full":
        cal = {"calibration": cal_text, "tokenizer": tok} if method in ("gptq", "awq") else {}
        quantize(model, method, group_size=_group_size(model), **cal)
    return model, tok, ""


def _group_size(model) -> int:
    """The largest of 128, 64, 32 that divides every linear layer's width."""
    from inferlab.quant.linear import find_linears

    widths = [m.in_features for m in find_linears(model).values()]
    return next(g for g in (128, 64, 32) if all(w % g == 0 for w in widths))


def quality_table(model_name: str = "tiny", device: str = "cpu", methods=None, windows: int = 16,
                  batches=(1, 32), checkpoint=None) -> list[dict]:
    """One row per method: bits, weight bytes, held-out perplexity, generate tokens/s per batch."""
    import tempfile

    from inferlab.quant import perplexity
    from inferlab.quant.calibration import stdlib_text

    methods = methods or ("full", *QUALITY_METHODS, "bnb-int8", "bnb-nf4", "gguf-Q8_0", "gguf-Q4_0")
    held, cal = stdlib_text("heldout", 80_000), stdlib_text("calibration", 60_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            start = time.perf_counter()
            try:
                model, tok, note = _variant_model(model_name, method, device, cal, tmp)
            except (ImportError, RuntimeError) as err:
                rows.append({"method": method, "error": f"{type(err).__name__}: {err}"[:300]})
                continue
            row = {"method": method, "bits": _bits(method), "note": note,
                   "weight_bytes": getattr(model, "gguf_file_bytes", None) or weight_bytes(model),
                   "quantize_s": time.perf_counter() - start,
                   "perplexity": perplexity(model, tok, held, max_windows=windows)}
            row.update({f"tok_s_b{b}": generate_speed(model, tok, b, device=device) for b in batches})
            rows.append(row)
            print(f"{method:10s} {row['weight_bytes'] / 1e6:7.2f} MB  ppl {row['perplexity']:7.3f}  "
                  + "  ".join(f"b{b} {row[f'tok_s_b{b}']:7.1f} tok/s" for b in batches), flush=True)
            if checkpoint:
                checkpoint(rows)
    return rows


def _bits(method: str) -> float:
    from inferlab.quant import METHODS

    return {"full": 32, "bnb-int8": 8, "bnb-nf4": 4, "bnb-fp4": 4, "gguf-Q8_0": 8.5, "gguf-Q4_0": 4.5}.get(
        method, METHODS.get(method))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferlab.bench quant", description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--model", default="tiny", help="the model of the quality table")
    p.add_argument("--shapes", default=None, help="comma-separated configs for the decode table (default: "
                                                 "llama-3-8b,llama-3.2-1b on CUDA, none on the CPU)")
    p.add_argument("--methods", default=None, help="comma-separated quality rows (default: all)")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer perplexity windows")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: tiny matmuls gain nothing from more)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from inferlab.device import pick_device

    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    shapes = args.shapes if args.shapes is not None else ("llama-3-8b,llama-3.2-1b" if device.startswith("cuda") else "")
    payload: dict = {"device": device, "model": args.model, "quality": [], "decode": []}

    def save(key):
        def checkpoint(rows):
            payload[key] = rows
            save_result("quant", payload, args.out)
        return checkpoint

    for shape in filter(None, shapes.split(",")):
        payload["decode"] += decode_table(shape, device, checkpoint=lambda r, done=list(payload["decode"]): save("decode")(done + r))
    if not args.no_quality:
        methods = tuple(args.methods.split(",")) if args.methods else None
        quality_table(args.model, device, methods, windows=4 if args.quick else 16, checkpoint=save("quality"))
    print(f"wrote {save_result('quant', payload, args.out)}")
    return 0
