"""The trainer of the embedded default models: a small Llama target and a ~10x smaller draft.

Both are trained here, with a fixed seed, on a corpus every Python user already has:
the source files of the Python standard library. They exist so that every notebook
runs offline on a laptop, on Binder's 2 GB and in CI, with a model that writes
plausible Python and a draft that a speculative decoder can actually use.

- tokenizer: byte-level BPE (as GPT-2), trained with the ``tokenizers`` library, so
  any text round-trips exactly, spaces and newlines included;
- target: Llama architecture with grouped-query attention (Ainslie et al., 2023);
- draft: the same architecture, ~10x fewer parameters, trained by distillation from
  the target (Hinton et al., 2015; DistillSpec, Zhou et al., 2023) so that its greedy
  guesses agree with the target's more often, which is what speculative decoding pays for.

Run ``python -m inferlab.tools.train_tiny train --out data/models`` (``make models``; a GPU makes it
a few minutes). The model card comes from :mod:`inferlab.tools.model_card`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SEED = 0
EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Held-out modules (top-level names): never seen by the tokenizer or the models.
HELDOUT_MODULES = (
    "json", "textwrap", "heapq", "fractions", "statistics", "difflib",
    "csv", "bisect", "shlex", "queue", "string", "colorsys",
)
# Validation modules: used only to pick the best checkpoint (early stopping).
VALIDATION_MODULES = ("calendar", "pprint", "reprlib", "glob", "fnmatch", "configparser", "dataclasses", "enum")
EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", "pydoc_data", "encodings", "ensurepip"}
MAX_FILE_BYTES = 300_000
PROMPTS = (
    "def fibonacci(n):",
    "class Stack:\n    def __init__(self):",
    "import os\n\ndef list_python_files(path):",
    "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"",
    "    def __repr__(self):",
)


@dataclass
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


TARGET = ModelShape(256, 704, 8, 8, 2)
DRAFT = ModelShape(128, 256, 2, 4, 1)


@dataclass
class TrainConfig:
    vocab_size: int = 4096
    context_length: int = 1024
    seq_len: int = 512
    batch_size: int = 64
    target_steps: int = 3000
    draft_steps: int = 5000
    eval_every: int = 250
    onpolicy_sequences: int = 4096
    onpolicy_temperature: float = 0.7
    lr: float = 3e-3
    draft_lr: float = 4e-3
    warmup: int = 100
    weight_decay: float = 0.1
    distill_weight: float = 0.8
    eval_windows: int = 256
    seed: int = SEED
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------- corpus


def stdlib_files(root: str | None = None) -> list[Path]:
    """Every .py file of the standard library, sorted, minus vendored and generated trees."""
    root_path = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root_path.rglob("*.py")):
        rel = path.relative_to(root_path)
        if any(part in EXCLUDED_DIRS for part in rel.parts):
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        files.append(path)
    return files


def _top_module(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def stdlib_version(root: Path) -> str:
    """'3.11' from a folder named python3.11, else this interpreter's version."""
    name = root.name
    if name.startswith("python3."):
        return name.removeprefix("python")
    return platform.python_version()


def load_corpus(root: str | None = None) -> dict:
    """{'train': [...texts], 'heldout': [...texts], 'meta': {...}} with a sha256 of the whole."""
    root_path = Path(root or sysconfig.get_paths()["stdlib"])
    digest = hashlib.sha256()
    train, heldout, validation, heldout_names = [], [], [], []
    for path in stdlib_files(str(root_path)):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(root_path)
        digest.update(str(rel).encode() + b"\0" + text.encode() + b"\0")
        top = _top_module(rel)
        if top in HELDOUT_MODULES:
            heldout.append(text)
            heldout_names.append(str(rel))
        elif top in VALIDATION_MODULES:
            validation.append(text)
        else:
            train.append(text)
    meta = {
        "python": stdlib_version(root_path),
        "stdlib": str(root_path),
        "files": len(train) + len(heldout) + len(validation),
        "validation_files": len(validation),
        "validation_modules": list(VALIDATION_MODULES),
        "train_files": len(train),
        "heldout_files": len(heldout),
        "heldout_modules": list(HELDOUT_MODULES),
        "train_bytes": sum(len(t.encode()) for t in train),
        "heldout_bytes": sum(len(t.encode()) for t in heldout),
        "sha256": digest.hexdigest(),
    }
    return {"train": train, "heldout": heldout, "validation": validation, "heldout_names": heldout_names, "meta": meta}


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE: every byte is in the alphabet, so decoding is exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=TrainConfig.context_length,
    )


def encode_stream(tok, texts: list[str]):
    """All texts as one token stream, documents separated by EOS."""
    import numpy as np

    eos = tok.token_to_id(EOS)
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


# ---------------------------------------------------------------- models


def llama_config(shape: ModelShape, cfg: TrainConfig, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.hidden_size // shape.num_attention_heads,
        max_position_embeddings=cfg.context_length,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id(EOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _batches(streams, cfg: TrainConfig, generator, device):
    """Random windows, the batch split evenly between the given token streams."""
    import torch

    datas = [torch.from_numpy(s.astype("int64")) for s in streams]
    per = [cfg.batch_size // len(datas)] * len(datas)
    per[0] += cfg.batch_size - sum(per)
    while True:
        rows = []
        for data, n_rows in zip(datas, per, strict=True):
            starts = torch.randint(0, len(data) - cfg.seq_len - 1, (n_rows,), generator=generator)
            rows.append(data[starts[:, None] + torch.arange(cfg.seq_len + 1)[None, :]])
        chunk = torch.cat(rows).to(device, non_blocking=True)
        yield chunk[:, :-1], chunk[:, 1:]


def onpolicy_stream(target, stream, cfg: TrainConfig, device, prompt_len: int = 64, batch: int = 512, log=print):
    """Text the target writes itself, from random training prompts (on-policy distillation data).

    A draft is judged on the target's own continuations, so it learns best from them
    (DistillSpec, Zhou et al., 2023).
    """
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 2)
    torch.manual_seed(cfg.seed + 2)
    data = torch.from_numpy(stream.astype("int64"))
    eos = int(target.config.eos_token_id)
    prompt_len = min(prompt_len, cfg.seq_len // 2)
    pieces = []
    new_tokens = cfg.seq_len - prompt_len + 1
    batch = min(batch, cfg.onpolicy_sequences)
    for i in range(0, cfg.onpolicy_sequences, batch):
        starts = torch.randint(0, len(data) - prompt_len, (batch,), generator=gen)
        prompts = data[starts[:, None] + torch.arange(prompt_len)[None, :]].to(device)
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            out = target.generate(
                prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=True, temperature=cfg.onpolicy_temperature, top_k=0, pad_token_id=eos,
            )
        rows = out.cpu().numpy()
        pieces.append(np.concatenate([rows, np.full((len(rows), 1), eos)], axis=1).reshape(-1))
        log(f"on-policy text: {i + batch}/{cfg.onpolicy_sequences} sequences")
    return np.concatenate(pieces).astype(np.int32)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(model, streams, cfg: TrainConfig, steps: int, lr: float, device, teacher=None, val_windows=None, log=print):
    """AdamW with warmup + cosine; with ``teacher``, the loss mixes cross-entropy and KL(teacher || model).

    Every ``cfg.eval_every`` steps the validation perplexity is measured and the best
    weights are kept (early stopping: the corpus is small enough to overfit).
    """
    import copy

    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(cfg.seed + (1 if teacher is not None else 0))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=(device == "cuda"),
    )
    use_amp = device == "cuda"
    batches = _batches(streams, cfg, gen, device)
    model.train()
    best = (float("inf"), None, -1)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, cfg.warmup)
        x, y = next(batches)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(input_ids=x).logits.float()
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=x).logits.float()
                kl = F.kl_div(
                    F.log_softmax(logits, -1).view(-1, logits.size(-1)),
                    F.log_softmax(t_logits, -1).view(-1, logits.size(-1)),
                    log_target=True, reduction="batchmean",
                )
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.eval_every == 0 or step == steps - 1:
            msg = f"step {step:5d}/{steps}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s"
            if val_windows is not None and step > 0:
                model.eval()
                val = perplexity(model, val_windows, device)
                model.train()
                if val < best[0]:
                    best = (val, copy.deepcopy(model.state_dict()), step)
                msg += f"  val ppl {val:.2f}"
            log(msg)
    if best[1] is not None:
        model.load_state_dict(best[1])
        log(f"kept step {best[2]} (val ppl {best[0]:.2f})")
    model.eval()
    return time.time() - t0, best[2]


# ---------------------------------------------------------------- evaluation


def heldout_windows(stream, cfg: TrainConfig):
    """Non-overlapping windows of the held-out stream, at most ``cfg.eval_windows``."""
    import torch

    data = torch.from_numpy(stream.astype("int64"))
    n = min(cfg.eval_windows, (len(data) - 1) // cfg.seq_len)
    return torch.stack([data[i * cfg.seq_len : i * cfg.seq_len + cfg.seq_len + 1] for i in range(n)])


def perplexity(model, windows, device, batch_size: int = 32) -> float:
    """exp(mean next-token cross-entropy) over the windows, in float32."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size].to(device)
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


def greedy_acceptance(target, draft, stream, device, k: int = 4, samples: int = 400, context: int = 128, seed: int = SEED):
    """Mean number of k greedy draft tokens the target accepts (its argmax agrees), on held-out code.

    Accepted count = length of the longest prefix of the draft's greedy k tokens that equals
    the target's greedy choice at each position; the speculative step then adds one target token.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(stream.astype("int64"))
    starts = torch.randint(0, len(data) - context - k - 1, (samples,), generator=gen)
    ctx = torch.stack([data[s : s + context] for s in starts]).to(device)
    with torch.no_grad():
        proposal = ctx
        for _ in range(k):
            nxt = draft(input_ids=proposal).logits[:, -1].argmax(-1, keepdim=True)
            proposal = torch.cat([proposal, nxt], dim=1)
        target_choice = target(input_ids=proposal).logits[:, context - 1 : context - 1 + k].argmax(-1)
    agree = (target_choice == proposal[:, context:]).int()
    accepted = agree.cumprod(dim=1).sum(dim=1).float()
    per_position = agree.cumprod(dim=1).float().mean(dim=0)
    return {
        "k": k,
        "samples": samples,
        "context_tokens": context,
        "mean_accepted": accepted.mean().item(),
        "mean_tokens_per_target_call": accepted.mean().item() + 1,
        "accept_rate_by_position": [round(v, 4) for v in per_position.tolist()],
    }


def generation_acceptance(target, draft, stream, device, k: int = 4, prompts: int = 32, context: int = 128,
                          new_tokens: int = 64, seed: int = SEED):
    """Mean accepted draft tokens (of k) per step while greedily generating from held-out prompts.

    Unlike :func:`greedy_acceptance`, the context after the first step is the target's own
    output, which is what a speculative decoder sees.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(stream.astype("int64"))
    starts = torch.randint(0, len(data) - context, (prompts,), generator=gen)
    accepted = []
    with torch.no_grad():
        for s in starts.tolist():
            ids = data[s : s + context][None].to(device)
            produced = 0
            while produced < new_tokens:
                proposal = ids
                for _ in range(k):
                    proposal = torch.cat([proposal, draft(input_ids=proposal).logits[:, -1:].argmax(-1)], 1)
                choice = target(input_ids=proposal).logits[0, ids.shape[1] - 1 :].argmax(-1)
                drafted = proposal[0, ids.shape[1] :]
                n = int((drafted == choice[:k]).int().cumprod(0).sum())
                accepted.append(n)
                ids = torch.cat([ids, drafted[:n][None], choice[n : n + 1][None]], 1)
                produced += n + 1
    mean = sum(accepted) / len(accepted)
    return {"k": k, "prompts": prompts, "context_tokens": context, "new_tokens": new_tokens,
            "steps": len(accepted), "mean_accepted": round(mean, 4), "mean_tokens_per_target_call": round(mean + 1, 4)}


def greedy_completions(model, hf_tok, device, max_new_tokens: int = 48) -> list[dict]:
    import torch

    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([hf_tok.encode(prompt)], device=device)
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=hf_tok.pad_token_id)
        out.append({"prompt": prompt, "completion": hf_tok.decode(gen[0, ids.shape[1] :].tolist())})
    return out


# ---------------------------------------------------------------- main


def hardware() -> dict:
    """The machine that trained the models (from :func:`inferlab.env_report`)."""
    from inferlab.device import env_report

    env = env_report(print_it=False)
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": env["cpu_count"], "torch": env["torch"],
            "transformers": env["transformers"]}
    if env.get("gpu_name"):
        info["gpu"] = env["gpu_name"]
    return info


def save_model(model, hf_tok, path: Path, dtype="float16"):
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(path, safe_serialization=True)
    hf_tok.save_pretrained(path)
    (path / "generation_config.json").unlink(missing_ok=True)
    # the class name every transformers release (4.x and 5.x) knows for a tokenizer.json
    tc_path = path / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")


def _tokens(corpus: dict, cfg: TrainConfig, reuse_target: Path | None, log):
    """The tokenizer (trained, or the reused target's) and the token streams of each split."""
    if reuse_target is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(reuse_target) / "tokenizer.json"))
    else:
        tok = train_tokenizer(corpus["train"], cfg.vocab_size)
    streams = {split: encode_stream(tok, corpus[split]) for split in ("train", "heldout", "validation")}
    log(f"tokens: train {len(streams['train']):,}  held-out {len(streams['heldout']):,}")
    return tok, streams


def _new_model(shape: ModelShape, cfg: TrainConfig, tok, seed: int, device: str):
    """A freshly initialised Llama of ``shape``, built on the CPU with ``seed`` (the same
    weights on every machine), then moved to ``device``."""
    import torch
    from transformers import LlamaForCausalLM

    from inferlab.hub import random_init

    model = random_init(llama_config(shape, cfg, tok), "cpu", torch.float32, seed, build=LlamaForCausalLM)
    return model.to(device)


def _load(path: Path, device: str):
    """A saved model, reloaded in float32 for training or evaluation."""
    from inferlab.hub import load_model

    return load_model(path, device=device, dtype="float32")[0]


def _target(tok, streams: dict, val_windows, cfg: TrainConfig, device: str, reuse_target, report: dict, log):
    """Train the target, or reuse an already trained one: ``(model, (seconds, kept step))``."""
    if reuse_target is None:
        target = _new_model(TARGET, cfg, tok, cfg.seed, device)
        log(f"target: {count_parameters(target):,} parameters")
        return target, train_model(target, [streams["train"]], cfg, cfg.target_steps, cfg.lr, device,
                                   val_windows=val_windows, log=log)
    previous = json.loads((Path(reuse_target).parent / "training.json").read_text())["models"]["tiny"]
    report["target_reused_from"] = str(reuse_target)
    log(f"target: reused {reuse_target}")
    return _load(reuse_target, device), (previous["train_seconds"], previous["kept_step"])


def _draft(target, tok, streams: dict, val_windows, cfg: TrainConfig, device: str, report: dict, log):
    """Distil the draft from the target, on stdlib code and on text the target writes itself."""
    t0 = time.time()
    own_text = onpolicy_stream(target, streams["train"], cfg, device, log=log)
    report["onpolicy"] = {"tokens": int(len(own_text)), "seconds": round(time.time() - t0, 1),
                          "temperature": cfg.onpolicy_temperature}
    draft = _new_model(DRAFT, cfg, tok, cfg.seed + 1, device)
    log(f"draft: {count_parameters(draft):,} parameters")
    return draft, train_model(draft, [streams["train"], own_text], cfg, cfg.draft_steps, cfg.draft_lr, device,
                              teacher=target, val_windows=val_windows, log=log)


SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")


def _evaluate(out: Path, tok, hf_tok, held_stream, windows, device: str, report: dict, log) -> None:
    """Measure what ships (the saved fp16 files, computed in float32): perplexity, completions, acceptance."""
    shipped = {name: _load(out / name, device) for name in ("tiny", "tiny-draft")}
    for name, model in shipped.items():
        ppl = perplexity(model, windows, device)
        report["models"][name].update(
            heldout_perplexity=round(ppl, 3),
            heldout_bits_per_byte=round(math.log2(ppl) / report["corpus"]["heldout_bytes_per_token"], 4),
            chance_perplexity=tok.get_vocab_size(),
            size_bytes=sum(f.stat().st_size for f in (out / name).iterdir()),
            config={k: getattr(model.config, k) for k in SHAPE_KEYS},
            completions=greedy_completions(model, hf_tok, device),
        )
        log(f"{name}: held-out perplexity {ppl:.2f}")
    target, draft = shipped["tiny"], shipped["tiny-draft"]
    report["speculative_greedy_acceptance"] = greedy_acceptance(target, draft, held_stream, device)
    log(f"acceptance: {report['speculative_greedy_acceptance']}")
    report["speculative_generation_acceptance"] = generation_acceptance(target, draft, held_stream, device)
    log(f"acceptance while generating: {report['speculative_generation_acceptance']}")


def _new_report(cfg: TrainConfig, corpus: dict, streams: dict) -> dict:
    report = {"train_config": asdict(cfg), "corpus": corpus["meta"], "hardware": hardware(), "models": {}}
    held = streams["heldout"]
    report["corpus"]["train_tokens"] = int(len(streams["train"]))
    report["corpus"]["heldout_tokens"] = int(len(held))
    report["corpus"]["heldout_bytes_per_token"] = corpus["meta"]["heldout_bytes"] / max(1, len(held) - len(corpus["heldout"]))
    return report


def train(out: Path, cfg: TrainConfig, stdlib: str | None = None, reuse_target: Path | None = None, log=print) -> dict:
    """Train the tokenizer, the target and the draft; save them, ``training.json`` and the model card."""
    import torch

    from inferlab.tools.model_card import model_card

    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.time()
    corpus = load_corpus(stdlib)
    log(f"corpus: {json.dumps(corpus['meta'])}")
    tok, streams = _tokens(corpus, cfg, reuse_target, log)
    hf_tok = hf_tokenizer(tok)
    val_windows = heldout_windows(streams["validation"], cfg)[:64]
    report = _new_report(cfg, corpus, streams)
    target, t_target = _target(tok, streams, val_windows, cfg, device, reuse_target, report, log)
    draft, t_draft = _draft(target, tok, streams, val_windows, cfg, device, report, log)
    for name, model, (seconds, best_step) in (("tiny", target, t_target), ("tiny-draft", draft, t_draft)):
        save_model(model, hf_tok, out / name)
        report["models"][name] = {
            "parameters": count_parameters(model), "train_seconds": round(seconds, 1), "kept_step": best_step,
        }
    _evaluate(out, tok, hf_tok, streams["heldout"], heldout_windows(streams["heldout"], cfg), device, report, log)
    report["total_seconds"] = round(time.time() - t_start, 1)
    report["date"] = time.strftime("%Y-%m-%d")
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(model_card(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferlab.tools.train_tiny", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train the tokenizer, target and draft; write them and a model card")
    p.add_argument("--out", type=Path, default=Path("data/models"))
    p.add_argument("--stdlib", default=None, help="standard library folder (default: this Python's)")
    p.add_argument("--target-steps", type=int, default=TrainConfig.target_steps)
    p.add_argument("--draft-steps", type=int, default=TrainConfig.draft_steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--eval-windows", type=int, default=TrainConfig.eval_windows)
    p.add_argument("--onpolicy-sequences", type=int, default=TrainConfig.onpolicy_sequences)
    p.add_argument("--reuse-target", type=Path, default=None,
                   help="folder of an already trained target (its tokenizer too): train only the draft")
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        target_steps=args.target_steps, draft_steps=args.draft_steps,
        batch_size=args.batch_size, eval_windows=args.eval_windows, onpolicy_sequences=args.onpolicy_sequences,
    )
    report = train(args.out, cfg, args.stdlib, reuse_target=args.reuse_target, log=lambda m: print(m, flush=True))
    print(json.dumps({k: v for k, v in report["models"].items()}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
