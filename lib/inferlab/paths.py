"""Where inferlab's data lives: embedded models, published configs, traces, results.

In a checkout (``pip install -e .``) that is the repository's ``data/`` folder;
in a plain ``pip install .`` the same files ship inside the package as
``inferlab._data``. ``INFERLAB_DATA`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The folder holding models/, configs/, traces/ and results/."""
    env = os.environ.get("INFERLAB_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "data"
    if (repo / "models").is_dir():
        return repo
    try:
        from importlib.resources import files

        return Path(str(files("inferlab._data")))
    except (ModuleNotFoundError, TypeError):
        return repo


def models_dir() -> Path:
    return data_dir() / "models"


def configs_dir() -> Path:
    return data_dir() / "configs"


def traces_dir() -> Path:
    return data_dir() / "traces"


def results_dir() -> Path:
    return data_dir() / "results"


def repo_root() -> Path | None:
    """The checkout's root when running from one (used for notebooks/ and build/)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None
