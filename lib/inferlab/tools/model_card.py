"""The model card of the embedded default models (data/models/README.md), written from the
training report that :func:`inferlab.tools.train_tiny.train` produces (``training.json``).

A model card states what a model is for, what it was trained on and how well it does
(Mitchell et al., "Model Cards for Model Reporting", FAT* 2019); every number here is read
from the report, none is typed by hand.
"""

from __future__ import annotations

REPRODUCE = "python -m inferlab.tools.train_tiny train --out data/models --stdlib PATH/TO/python3.11"


def _pair(t: dict, d: dict, fmt) -> tuple[str, str]:
    return fmt(t), fmt(d)


def _shape_rows(t: dict, d: dict) -> list[tuple[str, str, str]]:
    """Architecture rows of the summary table, target beside draft."""
    c = lambda m, a, b, sep: f"{m['config'][a]}{sep}{m['config'][b]}"  # noqa: E731
    return [
        ("parameters", f"{t['parameters']:,}", f"{d['parameters']:,}"),
        ("layers × hidden", *_pair(t, d, lambda m: c(m, "num_hidden_layers", "hidden_size", " × "))),
        ("query heads / KV heads (GQA)", *_pair(t, d, lambda m: c(m, "num_attention_heads", "num_key_value_heads", " / "))),
        ("head dim / MLP width", *_pair(t, d, lambda m: c(m, "head_dim", "intermediate_size", " / "))),
        ("context length", *_pair(t, d, lambda m: str(m["config"]["max_position_embeddings"]))),
        ("vocabulary (byte-level BPE)", *_pair(t, d, lambda m: str(m["config"]["vocab_size"]))),
    ]


def _quality_rows(t: dict, d: dict) -> list[tuple[str, str, str]]:
    """Size, held-out quality and training-time rows of the summary table."""
    return [
        ("stored dtype / size", *_pair(t, d, lambda m: f"float16 / {m['size_bytes'] / 1e6:.1f} MB")),
        ("held-out perplexity (chance = vocab)", *_pair(t, d, lambda m: f"{m['heldout_perplexity']:.2f}")),
        ("held-out bits per byte", *_pair(t, d, lambda m: f"{m['heldout_bits_per_byte']:.3f}")),
        ("training time", f"{t['train_seconds']:.0f} s", f"{d['train_seconds']:.0f} s (distilled from tiny)"),
    ]


def summary(report: dict) -> list[str]:
    """Title, what the models are, and the table of both models."""
    t, d = report["models"]["tiny"], report["models"]["tiny-draft"]
    lines = [
        "# Embedded default models: `tiny` and `tiny-draft`",
        "",
        "Two Llama-architecture causal LMs in Hugging Face format (`config.json`, `model.safetensors`,",
        "`tokenizer.json`), small enough to ship in the repository and run anywhere offline.",
        "They write plausible Python; they are teaching instruments, not assistants.",
        "Load them with `inferlab.load_model(\"tiny\")` or `AutoModelForCausalLM.from_pretrained(\"data/models/tiny\")`.",
        "",
        "| | tiny (target) | tiny-draft |",
        "| --- | --- | --- |",
    ]
    return lines + [f"| {a} | {b} | {e} |" for a, b, e in _shape_rows(t, d) + _quality_rows(t, d)]


def corpus_section(report: dict) -> list[str]:
    """Which files were trained on, held out and used for validation."""
    from inferlab.tools.train_tiny import EXCLUDED_DIRS, MAX_FILE_BYTES

    c = report["corpus"]
    return [
        "",
        "## Corpus",
        "",
        f"The `.py` files of the Python {c['python']} standard library ({c['files']} files, sha256 `{c['sha256'][:16]}…`),",
        f"excluding {', '.join(sorted(EXCLUDED_DIRS))} and files over {MAX_FILE_BYTES // 1000} kB.",
        f"Held out for evaluation (never seen by tokenizer or models): {', '.join(c['heldout_modules'])}",
        f"({c['heldout_files']} files, {c['heldout_tokens']:,} tokens). Training: {c['train_files']} files, {c['train_tokens']:,} tokens.",
        f"Validation (used only to keep the best checkpoint): {', '.join(c['validation_modules'])}.",
    ]


def training_section(report: dict) -> list[str]:
    """Hardware, schedule, distillation recipe and how to reproduce it."""
    hw, cfg, models = report["hardware"], report["train_config"], report["models"]
    lines = [
        "",
        "## Training",
        "",
        f"Hardware: {hw.get('gpu', hw['cpu'])}, torch {hw['torch']}, transformers {hw.get('transformers')}; seed {cfg['seed']};",
        f"{cfg['target_steps']} steps (target) and {cfg['draft_steps']} steps (draft) of",
        f"{cfg['batch_size']} × {cfg['seq_len']} tokens, AdamW, warmup + cosine, bf16 autocast;",
        f"kept the checkpoint with the best validation perplexity (target: step {models['tiny']['kept_step']}, draft: step {models['tiny-draft']['kept_step']}).",
        f"The draft minimises {cfg['distill_weight']} × KL(target ‖ draft) + {1 - cfg['distill_weight']:.1f} × cross-entropy,",
        f"on batches half standard-library code, half text the target wrote itself ({report['onpolicy']['tokens']:,} tokens sampled at temperature {report['onpolicy']['temperature']}).",
        f"Total wall time including tokenizer and evaluation: {report['total_seconds']:.0f} s on {report['date']}.",
        f"Reproduce: `{REPRODUCE}`.",
    ]
    if report.get("target_reused_from"):
        lines += [
            "The shipped target comes from a first run of that recipe; the draft from a second run",
            "(`--reuse-target data/models/tiny`) that distilled it from the shipped target; wall time above is the second run's.",
        ]
    return lines


def speculative_section(report: dict) -> list[str]:
    """How many draft tokens the target accepts: on fixed contexts and while generating."""
    acc, gen = report["speculative_greedy_acceptance"], report["speculative_generation_acceptance"]
    return [
        "",
        "## Speculative decoding: how useful is the draft?",
        "",
        f"On {acc['samples']} random positions of held-out code ({acc['context_tokens']}-token contexts), the target",
        f"accepts on average **{acc['mean_accepted']:.2f} of {acc['k']}** greedy draft tokens",
        f"({acc['mean_tokens_per_target_call']:.2f} tokens per target call with the bonus token).",
        f"Acceptance by draft position: {', '.join(f'{v:.2f}' for v in acc['accept_rate_by_position'])}.",
        "",
        f"While generating greedily from {gen['prompts']} held-out prompts "
        f"({gen['new_tokens']} new tokens each), where the context is the target's own output,",
        f"the target accepts on average **{gen['mean_accepted']:.2f} of 4** draft tokens per step.",
    ]


def completions_section(report: dict) -> list[str]:
    """Greedy completions: every prompt for the target, the first two for the draft."""
    lines = ["", "## Greedy completions (target)", ""]
    for item in report["models"]["tiny"]["completions"]:
        lines += ["```python", item["prompt"] + item["completion"], "```", ""]
    lines += ["## Greedy completions (draft)", ""]
    for item in report["models"]["tiny-draft"]["completions"][:2]:
        lines += ["```python", item["prompt"] + item["completion"], "```", ""]
    return lines


def model_card(report: dict) -> str:
    """The whole card, as Markdown."""
    sections = (summary, corpus_section, training_section, speculative_section, completions_section)
    lines = [line for section in sections for line in section(report)]
    return "\n".join([*lines, "Full numbers: `training.json` beside this file.", ""])


def load_report() -> dict:
    """The training report of the embedded models (data/models/training.json)."""
    import json

    from inferlab.paths import data_dir

    return json.loads((data_dir() / "models" / "training.json").read_text())


def data_limit_sentence(report: dict) -> str:
    """Why ``tiny`` loops under greedy decoding, in numbers read from its training report."""
    t, cfg, corpus = report["models"]["tiny"], report["train_config"], report["corpus"]
    return (f"tiny has {t['parameters'] / 1e6:.1f} M parameters and saw {corpus['train_tokens'] / 1e6:.1f} M tokens of "
            f"standard-library code. Its held-out perplexity ({t['heldout_perplexity']:.1f}) stopped improving at step "
            f"{t['kept_step']:,} of {cfg['target_steps']:,}, so more steps would not help: it is short of data, "
            "not of training.")
