"""Drawings for notebook 05: generated text colored by provenance, distributions side by side."""

from __future__ import annotations

import html

import torch

from inferlab.speculative import ACCEPTED, BONUS, RESAMPLED, SpeculativeOutput

COLORS = {ACCEPTED: "#b7e4b0", RESAMPLED: "#f7b7a3", BONUS: "#a9c8f0", "prompt": "#eeeeee"}
LABELS = {ACCEPTED: "draft token, accepted", RESAMPLED: "target token after a rejection",
          BONUS: "bonus token (all drafts accepted)", "prompt": "prompt"}


def _span(text: str, kind: str) -> str:
    return (f'<span title="{LABELS[kind]}" style="background:{COLORS[kind]};border-radius:2px;'
            f'padding:0 1px;margin:0 0.5px">{html.escape(text)}</span>')


def provenance_html(tokenizer, output: SpeculativeOutput, row: int = 0, show_prompt: bool = True) -> str:
    """HTML of one row: the prompt in gray, then every new token on the color of where it came from."""
    prompt = output.sequences[row][: len(output.sequences[row]) - len(output.new_tokens[row])]
    parts = [_span(tokenizer.decode(prompt), "prompt")] if show_prompt else []
    parts += [_span(tokenizer.decode([t]), kind) for t, kind in zip(output.new_tokens[row], output.provenance[row],
                                                                     strict=True)]
    legend = " ".join(_span(LABELS[k], k) for k in (ACCEPTED, RESAMPLED, BONUS))
    return (f'<div style="font-family:monospace;font-size:12px;line-height:1.6">{legend}</div>'
            f'<div style="font-family:monospace;font-size:12px;white-space:pre-wrap;line-height:1.6;'
            f'border:1px solid #ddd;padding:6px">{"".join(parts)}</div>')


def provenance_text(output: SpeculativeOutput, row: int = 0) -> str:
    """The same provenance as letters (a = accepted, r = resampled, b = bonus), for plain-text outputs."""
    letter = {ACCEPTED: "a", RESAMPLED: "r", BONUS: "b"}
    return "".join(letter[k] for k in output.provenance[row])


def show_provenance(tokenizer, output: SpeculativeOutput, row: int = 0) -> None:
    """Display the colored HTML in a notebook (falls back to printing the letters)."""
    try:
        from IPython.display import HTML, display

        display(HTML(provenance_html(tokenizer, output, row)))
    except ImportError:  # pragma: no cover
        print(provenance_text(output, row))


def distribution_figure(tokenizer, target_probs: torch.Tensor, frequencies: dict[str, torch.Tensor], top: int = 12):
    """Plotly bars: the target's probabilities of its ``top`` likeliest tokens vs each sampler's
    observed frequencies (``frequencies[label]``: one number per vocabulary entry, summing to 1)."""
    import plotly.graph_objects as go

    from inferlab.viz import PALETTE

    order = target_probs.argsort(descending=True)[:top]
    names = [repr(tokenizer.decode([int(t)])) for t in order]
    fig = go.Figure(go.Bar(name="target p (exact)", x=names, y=target_probs[order].tolist(), marker_color="#444"))
    for i, (label, freq) in enumerate(frequencies.items()):
        fig.add_bar(name=label, x=names, y=freq[order].tolist(), marker_color=PALETTE[i % len(PALETTE)])
    fig.update_layout(barmode="group", height=360, yaxis_title="probability", xaxis_title="first generated token",
                      title="First-token distribution: exact target vs samplers")
    return fig


def _range_text(values, fmt: str = "{:.2f}") -> str:
    """``lo-hi`` of ``values`` as text, or one number when they print the same."""
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def recorded_speedup_sentence(record: dict, method: str = "ours") -> str:
    """The greedy rows of a recorded ``bench speculative`` run in one sentence, every number read from it."""
    rows = [r["methods"][method] for r in record["results"] if r["temperature"] == 0.0 and method in r["methods"]]
    ks = [r["k"] for r in record["results"] if r["temperature"] == 0.0 and method in r["methods"]]
    get = lambda key: [row[key] for row in rows]  # noqa: E731
    return (f"In the recorded {record['device']} sweep ({record['model']} with {record['draft_model']}, greedy, "
            f"k = {', '.join(map(str, ks))}): alpha {_range_text(get('alpha'))}, c {_range_text(get('cost_ratio_c'))}; the "
            f"formula predicts {_range_text(get('predicted_speedup'))}x and the measurement gives "
            f"{_range_text(get('speedup_vs_plain'))}x, because verifying k + 1 tokens cost "
            f"{_range_text(get('verify_over_plain_step'))} target steps instead of one. Charged that cost, the formula "
            f"predicts {_range_text(get('predicted_speedup_with_verify_cost'))}x.")


def best_draft_sentence(tokens_per_call: dict[str, float]) -> str:
    """Which drafting method yielded the most tokens per target call (the others beside it)."""
    ranked = sorted(tokens_per_call.items(), key=lambda kv: -kv[1])
    rest = ", ".join(f"{name} {value:.2f}" for name, value in ranked[1:])
    return f"Most tokens per target call here: {ranked[0][0]} ({ranked[0][1]:.2f}; {rest})."
