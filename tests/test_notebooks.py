"""Every stored notebook: badges, Colab cell, parameters cell, executed in order, no volatile metadata."""

from pathlib import Path

import pytest

from inferlab.nbtools import check_notebook, read_source, with_header

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
