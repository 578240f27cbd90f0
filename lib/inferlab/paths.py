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
    installed = Path(__file__).resolve().parent / "_data"  # a plain `pip install .`
    if installed.is_dir():
        return installed
    import importlib.util

    spec = importlib.util.find_spec("inferlab._data")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return repo


def models_dir() -> Path:
    return data_dir() / "models"


def configs_dir() -> Path:
    return data_dir() / "configs"


def traces_dir() -> Path:
    return data_dir() / "traces"


def results_dir() -> Path:
    return data_dir() / "results"

