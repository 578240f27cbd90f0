"""Every stored notebook: badges, Colab cell, parameters cell, executed in order, no volatile metadata."""

from pathlib import Path

import pytest

from inferlab.tools.notebooks import check_notebook, read_source, with_header

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py"))


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    assert check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_its_source(path):
    assert (ROOT / "notebooks" / "src" / f"{path.stem}.py").is_file(), "build notebooks from notebooks/src/"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_sources_build_a_header(path):
    nb = with_header(read_source(path), path.stem)
    assert "colab-badge.svg" in nb.cells[1].source
    assert "google.colab" in nb.cells[2].source


def test_hygiene_check_catches_problems(tmp_path):
    import json

    good = json.loads(NOTEBOOKS[0].read_text())
    bad = dict(good, metadata={**good["metadata"], "widgets": {}})
    bad["cells"] = [c for c in good["cells"] if "parameters" not in c.get("metadata", {}).get("tags", [])]
    for c in bad["cells"]:
        if c["cell_type"] == "code":
            c["execution_count"] = None
    path = tmp_path / NOTEBOOKS[0].name
    path.write_text(json.dumps(bad))
    problems = " | ".join(check_notebook(path))
    assert "parameters" in problems and "unexecuted" in problems and "volatile" in problems


def test_make_run_reports_time_memory_and_failures(tmp_path, capsys):
    """`make run` (tools.notebooks run): a table row per notebook, peak RSS measured, non-zero exit on failure."""
    import nbformat

    from inferlab.tools.notebooks import run_all

    src = tmp_path / "nbs"
    src.mkdir()
    for name, code in (("a_ok", "x = bytearray(50_000_000)\nprint(len(x))"), ("b_fails", "1 / 0")):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, src / f"{name}.ipynb")
    assert run_all(src, tmp_path / "build") == 1
    table = capsys.readouterr().out
    assert "a_ok.ipynb" in table and "b_fails.ipynb" in table and "FAILED" in table
    import json

    rows = {r["notebook"]: r for r in json.loads((tmp_path / "build" / "run.json").read_text())}
    assert rows["a_ok.ipynb"]["status"] == "ok" and rows["a_ok.ipynb"]["peak_rss_mb"] >= 48
    assert rows["b_fails.ipynb"]["status"] == "FAILED" and "ZeroDivisionError" in rows["b_fails.ipynb"]["error"]
    assert (tmp_path / "build" / "a_ok.ipynb").is_file()
