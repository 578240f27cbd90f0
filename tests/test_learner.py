"""What a learner meets in the notebooks (issue 14): open exercises, no "seed" for the tutorial,
a static image beside every interactive figure, numbers in prose that come from results, the
real-model path open in `make lab`, one repository address, a Colab cell that fails loudly."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from inferlab.tools import notebooks as nbtools

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py"))
STORED = sorted((ROOT / "notebooks").glob("*.ipynb"))
LEARNER = [p for p in STORED if p.name[:2] in {"00", "01", "02", "03", "05"}]

# "seed" is a random seed only: allowed where it is one (seed=0, manual_seed, "a random seed", ...).
_SEED_OK = re.compile(r"(`seed`|\"seed\"|'seed'|manual_seed|random seed|fixed seed|seed\s*[=:)\],]|seed \d|seeds?\b\s*(=|\()|_seed|seed_|"
                      r"seed\) |\bseeded\b|--seed)", re.I)


def _text(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _outputs(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append("".join(o.get("text", "")))
        parts.append("".join((o.get("data") or {}).get("text/plain", "")))
    return "\n".join(parts)


def seed_misuses(text: str) -> list[str]:
    """Lines that use 'seed' for anything but a random seed."""
    bad = []
    for line in text.splitlines():
        for m in re.finditer(r"seed", line, re.I):
            window = line[max(0, m.start() - 12): m.end() + 12]
            if not _SEED_OK.search(window):
                bad.append(line.strip())
                break
    return bad


def test_seed_check_catches_the_lesson():
    assert seed_misuses("the seed lesson's rule") and seed_misuses("SeedStyleBatcher") and seed_misuses("the seed's choice")
    assert not seed_misuses("torch.manual_seed(0)  # a random seed") and not seed_misuses("generate(x, seed=0)")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_sources_never_call_the_tutorial_seed(path):
    assert seed_misuses(path.read_text()) == []


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.name)
def test_stored_notebooks_never_call_the_tutorial_seed(path):
    nb = json.loads(path.read_text())
    text = "\n".join(_text(c) + "\n" + _outputs(c) for c in nb["cells"])
    assert seed_misuses(text) == []


def test_library_names_and_docstrings_a_learner_reads():
    for path in (ROOT / "lib" / "inferlab").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"class \w*Seed\w*|def \w*seed_style\w*", text), path
        assert not re.search(r"seed[ -]lesson|the seed's|seed-style", text, re.I), path


# ------------------------------------------------------------------ open exercises


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.name)
def test_exercises_ship_open(path):
    """Every cell that calls a check_... helper shows a neutral 'not answered yet' after a Run All."""
    nb = json.loads(path.read_text())
    checked = [c for c in nb["cells"] if c["cell_type"] == "code" and re.search(r"^check_\w+\(", _text(c), re.M)]
    for cell in checked:
        out = _outputs(cell)
        assert "not answered yet" in out, f"{path.name}: an exercise that ships answered:\n{_text(cell)}"
        assert "✅" not in out and "❌" not in out and not any(o["output_type"] == "error" for o in cell["outputs"])


@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_learner_notebooks_have_exercises(path):
    text = "\n".join(_text(c) for c in json.loads(path.read_text())["cells"])
    assert re.search(r"^check_\w+\(", text, re.M) and "solution(" in text


# ------------------------------------------------------------------ static images


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.name)
def test_every_plotly_figure_has_a_static_image(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "application/vnd.plotly.v1+json" in data:
                assert data.get("image/png"), f"{path.name}: a plotly figure without image/png"
                assert "text/html" not in data, "the CDN loader shows blank offline; the PNG stands in"


def test_calculator_is_drawn_once_with_a_static_view():
    nb = json.loads((ROOT / "notebooks" / "01_bottlenecks_and_kv_cache.ipynb").read_text())
    calc = [c for c in nb["cells"] if c["cell_type"] == "code" and "calculator(" in _text(c)]
    assert len(calc) == 1
    bundles = [o.get("data", {}) for o in calc[0]["outputs"]]
    assert any("image/png" in b and "application/vnd.jupyter.widget-view+json" in b for b in bundles)
    assert not any("interactive(children" in b.get("text/plain", "") for b in bundles)


def test_static_twin_draws_every_kind_of_trace():
    from plotly.subplots import make_subplots

    from inferlab.viz.static import figure_png

    fig = make_subplots(rows=1, cols=2, subplot_titles=["a", "b"], specs=[[{"secondary_y": True}, {}]])
    fig.add_bar(x=["p", "q"], y=[1, 2], name="bars", text=["1", "2"], row=1, col=1)
    fig.add_scatter(x=[1, 2], y=[3, None], mode="lines+markers+text", text=["u", "v"], row=1, col=1, secondary_y=True)
    fig.add_heatmap(z=[[0, 1], [2, 3]], colorscale=[[0, "#fff"], [1, "#000"]], row=1, col=2)
    fig.add_hline(y=1.5, line_dash="dot")
    fig.update_layout(barmode="stack", title="t", yaxis_type="log")
    png = figure_png(json.loads(fig.to_json()))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_memory_map_opens_on_content_with_a_palette_apart_from_waste():
    from inferlab import paging_sim
    from inferlab.bench.workloads import generate_trace
    from inferlab.viz import paging as vp

    trace = generate_trace("alpaca", 40, rate=40.0, max_len=128, seed=0)
    maps = {n: paging_sim.simulate(trace, n, 512, block_size=8, max_len=128, frame_every=8, max_frames=6)
            for n in ("orca-max", "paged")}
    fig = vp.memory_map_animation(maps, cols=32)
    start = vp.first_frame_with_content(maps)
    assert fig.layout.sliders[0].active == start
    for heat in [t for t in fig.data if t.type == "heatmap"]:
        assert (heat.z < vp.RESERVED).any(), "the first frame drawn shows token states"
    assert not {c.lower() for c in vp.REQUEST_COLORS} & {c.lower() for c in vp._STATE_COLORS}
    assert fig.layout.legend.y > 1, "legend above the panels, away from the slider"
    slider, play = fig.layout.sliders[0], fig.layout.updatemenus[0]
    assert play.x < slider.x, "the play button sits left of the slider, not on its grip"


# ------------------------------------------------------------------ prose numbers


def _all_output_text(name: str) -> str:
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    return "\n".join(_outputs(c) for c in nb["cells"])


def test_recorded_roofline_claim_matches_the_record():
    from inferlab.bench import load_result
    from inferlab.viz.kvcache import recorded_decode_sentence

    record = load_result("roofline", "h200")
    sentence = recorded_decode_sentence(record)
    assert f"{record['generate']['tokens_per_s']:,.1f} tokens/s" in sentence
    assert sentence in _all_output_text("01_bottlenecks_and_kv_cache.ipynb"), "rebuild 01: the record changed"


def test_recorded_speculative_claim_matches_the_record():
    from inferlab.bench import load_result
    from inferlab.viz.speculative import recorded_speedup_sentence

    record = load_result("speculative", "cpu")
    sentence = recorded_speedup_sentence(record)
    greedy = [r["methods"]["ours"]["speedup_vs_plain"] for r in record["results"] if r["temperature"] == 0]
    assert f"{min(greedy):.2f}" in sentence and f"{max(greedy):.2f}" in sentence
    assert sentence in _all_output_text("05_speculative_decoding.ipynb"), "rebuild 05: the record changed"


def test_provenance_html_colours_every_token():
    from types import SimpleNamespace

    from inferlab.speculative import ACCEPTED, BONUS, RESAMPLED
    from inferlab.viz.speculative import COLORS, provenance_html

    out = SimpleNamespace(sequences=[[1, 2, 7, 8, 9]], new_tokens=[[7, 8, 9]], provenance=[[ACCEPTED, RESAMPLED, BONUS]])
    page = provenance_html(SimpleNamespace(decode=lambda ids: "".join(f"<{i}>" for i in ids)), out)
    assert page.count("<span") == 3 + 1 + 3  # legend, prompt, one per new token
    assert all(COLORS[k] in page for k in (ACCEPTED, RESAMPLED, BONUS, "prompt"))
    assert "&lt;7&gt;" in page and "&lt;1&gt;&lt;2&gt;" in page  # token text escaped, prompt decoded once


def test_best_draft_sentence_follows_the_numbers():
    from inferlab.viz.speculative import best_draft_sentence

    assert "draft model" in best_draft_sentence({"draft model": 3.56, "prompt lookup": 1.78}).split("(")[0]
    assert "prompt lookup" in best_draft_sentence({"draft model": 1.2, "prompt lookup": 1.78}).split("(")[0]


def test_training_claim_matches_the_report():
    from inferlab.tools.model_card import data_limit_sentence, load_report

    report = load_report()
    sentence = data_limit_sentence(report)
    assert f"{report['corpus']['train_tokens'] / 1e6:.1f} M tokens" in sentence
    assert f"step {report['models']['tiny']['kept_step']:,} of {report['train_config']['target_steps']:,}" in sentence


_MEASURED_IN_PROSE = re.compile(r"\d[\d.,]*\s*(tokens/s|tok/s)|\d\.\d+\s*[–-]\s*\d\.\d+\s*×", re.I)


@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_no_measured_speed_typed_into_prose(path):
    """Speeds and speedups in markdown go stale; they are printed by code from the results."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            assert not _MEASURED_IN_PROSE.search(_text(cell)), _MEASURED_IN_PROSE.search(_text(cell)).group(0)


# ------------------------------------------------------------------ real models, addresses, Colab


def _make_target(name: str) -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name}:.*\n((?:\t.*\n)+)", text, re.M)
    return match.group(1) if match else ""


def test_make_lab_is_not_offline():
    text = (ROOT / "Makefile").read_text()
    assert not re.search(r"^export\s+(HF_HUB_OFFLINE|TRANSFORMERS_OFFLINE)", text, re.M)
    assert "OFFLINE" not in _make_target("lab")
    for target in ("test", "notebooks"):
        assert "HF_HUB_OFFLINE=1" in _make_target(target) or "$(OFFLINE)" in _make_target(target), target
    for src in SOURCES:  # no notebook switches the network off for the learner
        assert not re.search(r"environ(\.setdefault\(|\[)\s*[\"'](HF_HUB|TRANSFORMERS)_OFFLINE", src.read_text()), src.name


def test_not_found_says_which_case(monkeypatch):
    from inferlab.hub import ModelNotFound, _not_found

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline mode is on" in str(_not_found("a/b", OSError("x")))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    message = str(_not_found("a/b", OSError("x")))
    assert isinstance(_not_found("a/b", OSError("x")), ModelNotFound)
    assert "no network" in message and "go online" not in message


def test_one_repository_address():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'Homepage = "{nbtools.REPO_URL}"' in pyproject
    for path in STORED:
        nb = json.loads(path.read_text())
        header = "\n".join(_text(c) for c in nb["cells"][:3])
        assert f"github/{nbtools.REPO}/blob" in header and nbtools.REPO_URL in header, path.name
    assert nbtools.repository(ROOT / "pyproject.toml") == nbtools.REPO


def test_a_fork_sets_the_address_in_one_place(tmp_path, monkeypatch):
    fork = tmp_path / "pyproject.toml"
    fork.write_text('[project.urls]\nHomepage = "https://github.com/someone/inferlab-fork"\n')
    assert nbtools.repository(fork) == "someone/inferlab-fork"
    monkeypatch.setenv("INFERLAB_REPO", "other/one")
    assert nbtools.repository(fork) == "other/one"


def test_colab_install_cell_fails_loudly(monkeypatch):
    import os
    import subprocess

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return types.SimpleNamespace(returncode=128, stderr="fatal: repository not found", stdout="")

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(os.path, "isdir", lambda p: False)
    with pytest.raises(RuntimeError, match="could not clone"):
        exec(nbtools.INSTALL_SOURCE, {})
    assert len(calls) == 1 and "check=False" not in nbtools.INSTALL_SOURCE


# ------------------------------------------------------------------ smaller points


@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_sdpa_is_explained_where_it_first_appears(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    first = next((_text(c) for c in cells if "SDPA" in _text(c)), None)
    assert first is None or "scaled_dot_product_attention" in first


def test_greedy_loop_is_explained_beside_sampling():
    nb = json.loads((ROOT / "notebooks" / "00_welcome_and_setup.ipynb").read_text())
    text = "\n".join(_text(c) for c in nb["cells"])
    assert "do_sample=True" in text and "loop" in text
    assert any("short of data" in _outputs(c) for c in nb["cells"])


def test_display_widget_carries_a_static_view(monkeypatch):
    import IPython.display
    import plotly.graph_objects as go

    from inferlab.viz.static import display_widget

    class FakeWidget:
        def _repr_mimebundle_(self, **_):
            return {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "interactive(children=(...))"}

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw=False: shown.append(bundle))
    display_widget(FakeWidget(), go.Figure(go.Bar(x=[1], y=[2])), "default: 56 sequences fit")
    (bundle,) = shown
    assert bundle["image/png"] and bundle["text/plain"] == "default: 56 sequences fit"
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_compare_runs_says_when_runs_disagree():
    from inferlab.stats import compare_runs

    clear = compare_runs([1.0, 1.1, 1.05], [0.5, 0.55, 0.6])
    assert clear["verdict"] == "faster" and 1.75 <= clear["low"] <= clear["ratio"] <= clear["high"] <= 2.0
    assert compare_runs([0.5, 0.55], [1.0, 1.1])["verdict"] == "slower"
    noisy = compare_runs([1.0, 1.1], [1.2, 0.9])
    assert noisy["verdict"] == "too noisy to conclude" and "too noisy" in noisy["text"]
    assert "too noisy" in compare_runs([1.0], [0.5])["verdict"], "one run has no spread"
