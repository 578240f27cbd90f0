"""Notebook tooling (maintainers and `make run`): build notebooks from their sources, run them all headless, check hygiene.

- ``python -m inferlab.tools.notebooks build notebooks/src/NN_name.py [--out notebooks]``:
  read the jupytext (percent-format) source, insert the standard header after the
  title cell (Colab and Binder badges, the Colab-only install cell), execute it, strip
  volatile metadata and write ``notebooks/NN_name.ipynb`` with outputs and execution counts.
- ``python -m inferlab.tools.notebooks run notebooks --out build``: execute every notebook into
  build/ and print notebook, seconds, peak memory (RSS of the kernel) and status; exits
  non-zero if any notebook fails (``make run``).
- ``python -m inferlab.tools.notebooks images notebooks/NN_name.ipynb``: add the static PNGs to a
  stored notebook without executing it again (``build`` does this itself).
- ``python -m inferlab.tools.notebooks check notebooks``: the hygiene checks that the tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


def repository(pyproject: Path | None = None) -> str:
    """``owner/name`` of the GitHub repository: the one place it is set is ``[project.urls] Homepage``
    in pyproject.toml (a fork changes that line and rebuilds the notebooks); ``INFERLAB_REPO``
    overrides it for one build."""
    if os.environ.get("INFERLAB_REPO"):
        return os.environ["INFERLAB_REPO"].strip("/")
    path = pyproject or Path(__file__).resolve().parents[3] / "pyproject.toml"
    text = path.read_text() if path.is_file() else ""
    match = re.search(r'^Homepage\s*=\s*"https://github\.com/([^"/]+/[^"/]+?)/?"', text, re.M)
    return match.group(1) if match else "inferlab/inferlab"


REPO = repository()
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO}"
HEADER_TAG = "inferlab-header"
INSTALL_TAG = "colab-install"
EXEC_ENV = {  # offline for building and running the notebooks (the embedded models), never for `make lab`
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
    "TQDM_DISABLE": "1",
}


def install_source(repo_url: str = REPO_URL) -> str:
    """The Colab-only install cell: clone (or fail loudly), then install beside Colab's own packages."""
    return f'''# Colab only: fetch inferlab and install it beside Colab's own torch, numpy and ipywidgets
# (pip's default strategy upgrades only what inferlab's ranges exclude). Elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    if not os.path.isdir("/content/inferlab/.git"):
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", "{repo_url}", "/content/inferlab"],
                               capture_output=True, text=True)
        if clone.returncode != 0:
            raise RuntimeError(f"could not clone {repo_url}: {{clone.stderr.strip()}}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/inferlab"], check=True)
    sys.path.insert(0, "/content/inferlab/lib")'''


INSTALL_SOURCE = install_source()


def badges_markdown(name: str, repo: str = REPO) -> str:
    """Colab and Binder badges for notebooks/NAME.ipynb (Binder deep-links into JupyterLab)."""
    colab = f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/notebooks/{name}.ipynb"
    binder = f"https://mybinder.org/v2/gh/{repo}/{BRANCH}?urlpath=lab/tree/notebooks/{name}.ipynb"
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
        f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder})"
    )


def header_cells(name: str):
    import nbformat

    badges = nbformat.v4.new_markdown_cell(badges_markdown(name))
    badges.metadata["tags"] = [HEADER_TAG]
    install = nbformat.v4.new_code_cell(INSTALL_SOURCE)
    install.metadata["tags"] = [HEADER_TAG, INSTALL_TAG]
    return [badges, install]


def read_source(path: Path):
    """A notebook from a jupytext percent-format script (or an .ipynb as is)."""
    import jupytext
    import nbformat

    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    nb = jupytext.read(path, fmt="py:percent")
    return nbformat.reads(nbformat.writes(nb), as_version=4)


def with_header(nb, name: str):
    """Insert the standard header after the title cell (drop any header already there)."""
    cells = [c for c in nb.cells if HEADER_TAG not in c.get("metadata", {}).get("tags", [])]
    if not cells or cells[0].cell_type != "markdown":
        raise ValueError(f"{name}: the first cell must be the markdown title ('# NN · Title')")
    nb.cells = [cells[0], *header_cells(name), *cells[1:]]
    return nb


def clean(nb):
    """Keep what readers and nbval need (outputs, execution counts, tags); drop volatile metadata."""
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        cell.metadata = {"tags": tags} if tags else {}
        for output in cell.get("outputs", []):
            if "metadata" in output:
                output["metadata"].pop("execution", None)
    return nb


def execute(nb, cwd: Path, timeout: int = 900):
    from nbclient import NotebookClient

    env_backup = {k: os.environ.get(k) for k in EXEC_ENV}
    os.environ.update(EXEC_ENV)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for key, value in env_backup.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


def write(nb, path: Path) -> None:
    """Stored as nbformat 4.4 (no random cell ids: diffs stay small), one-space indent."""
    import nbformat

    data = json.loads(nbformat.writes(nb))
    for cell in data["cells"]:
        cell.pop("id", None)
    data["nbformat_minor"] = min(data.get("nbformat_minor", 4), 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def add_static_images(nb):
    """Store a PNG beside every plotly figure, drawn by :mod:`inferlab.viz.static`, and drop plotly's
    CDN loader (``text/html``): JupyterLab still draws the interactive figure from its JSON, while
    GitHub, nbviewer and offline HTML, which cannot, show the picture."""
    from inferlab.viz.static import PLOTLY_MIME, figure_png_base64

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                data["image/png"] = figure_png_base64(data[PLOTLY_MIME])
                data.pop("text/html", None)
    return nb


def build(src: Path, out_dir: Path, run: bool = True) -> Path:
    """Source → executed, cleaned notebook ``out_dir/NAME.ipynb``, with a static image beside each figure."""
    nb = with_header(read_source(src), src.stem)
    if run:
        execute(nb, cwd=out_dir.resolve())
        add_static_images(nb)
    target = out_dir / f"{src.stem}.ipynb"
    write(clean(nb), target)
    return target


# ---------------------------------------------------------------- make run


def run_one(path: Path, out_dir: Path, timeout: int = 900) -> dict:
    """Execute one notebook in a child process; seconds, peak kernel RSS and status."""
    import psutil

    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "inferlab.tools.notebooks", "_execute", str(path), str(out_dir / path.name), str(timeout)]
    env = {**os.environ, **EXEC_ENV}
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, cpu = 0, {}
    me = psutil.Process(child.pid)

    def sample():
        nonlocal peak
        while child.poll() is None:
            try:
                kernels = [p for p in me.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in kernels if p.is_running()))
                for p in kernels:  # CPU seconds used by the kernel: what wall time would be on idle cores
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    sampler.join(timeout=1)
    seconds = time.perf_counter() - t0
    status = "ok" if child.returncode == 0 else "FAILED"
    detail = [] if child.returncode == 0 else (stderr or stdout).strip().splitlines()[-1:]
    return {"notebook": path.name, "seconds": round(seconds, 1), "cpu_seconds": round(sum(cpu.values()), 1),
            "peak_rss_mb": round(peak / 2**20), "status": status,
            "error": detail[0] if detail else ""}


def run_all(nb_dir: Path, out_dir: Path, pattern: str = "*.ipynb") -> int:
    rows = [run_one(p, out_dir) for p in sorted(nb_dir.glob(pattern))]
    header = f"{'notebook':<40} {'seconds':>8} {'kernel CPU s':>12} {'peak RSS (MB)':>14}  status"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['notebook']:<40} {r['seconds']:>8.1f} {r['cpu_seconds']:>12.1f} {r['peak_rss_mb']:>14}  {r['status']} {r['error']}")
    (out_dir / "run.json").write_text(json.dumps(rows, indent=2) + "\n")
    failed = [r for r in rows if r["status"] != "ok"]
    if not rows:
        print(f"no notebooks found in {nb_dir}")
        return 1
    return 1 if failed else 0


# ---------------------------------------------------------------- hygiene


def check_notebook(path: Path) -> list[str]:
    """Problems with a stored notebook (empty list when it is fine)."""
    nb = json.loads(path.read_text())
    problems = []
    cells = nb.get("cells", [])
    name = path.stem
    if not cells or cells[0]["cell_type"] != "markdown" or not "".join(cells[0]["source"]).lstrip().startswith("# "):
        problems.append("first cell is not a markdown title")
    text = lambda c: "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    badges = [c for c in cells[:4] if c["cell_type"] == "markdown" and "colab-badge.svg" in text(c) and "mybinder.org" in text(c)]
    if not badges:
        problems.append("no Colab + Binder badges near the top")
    elif f"notebooks/{name}.ipynb" not in text(badges[0]) or "urlpath=lab" not in text(badges[0]):
        problems.append("badges do not deep-link to this notebook in JupyterLab")
    install = [c for c in cells[:5] if c["cell_type"] == "code" and "google.colab" in text(c)]
    if not install:
        problems.append("no Colab-only install cell")
    elif any(w in text(install[0]) for w in ("install torch", "install numpy", "install ipywidgets", "-U ", "--upgrade")):
        problems.append("the Colab install cell replaces Colab's own packages")
    params = [c for c in cells if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if not params:
        problems.append("no cell tagged 'parameters'")
    elif "INFERLAB_MODEL" not in text(params[0]) or "INFERLAB_DEVICE" not in text(params[0]):
        problems.append("the parameters cell does not read INFERLAB_MODEL and INFERLAB_DEVICE")
    counts = [c.get("execution_count") for c in cells if c["cell_type"] == "code"]
    if any(c is None for c in counts):
        problems.append("unexecuted code cells (store the notebook with outputs)")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts are not 1..{len(counts)} in order")
    for c in cells:
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if any("plotly.js v" in str(v)[:2000] or len(str(v)) > 2_000_000 for v in data.values()):
                problems.append("an output embeds the whole plotly.js")
                break
            if "application/vnd.plotly.v1+json" in data and "image/png" not in data:
                problems.append("a plotly figure without a static image/png beside it (rebuild with `build`)")
            if "application/vnd.jupyter.widget-view+json" in data and "image/png" not in data:
                problems.append("a widget without a static image of its default state")
    meta = nb.get("metadata", {})
    if set(meta) - {"kernelspec", "language_info"}:
        problems.append(f"volatile notebook metadata: {sorted(set(meta) - {'kernelspec', 'language_info'})}")
    return problems


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_execute":  # internal: child process of `run`
        import nbformat

        src, dst, timeout = Path(argv[1]), Path(argv[2]), int(argv[3])
        nb = nbformat.read(src, as_version=4)
        execute(nb, cwd=src.parent.resolve(), timeout=timeout)
        write(nb, dst)
        return 0
    parser = argparse.ArgumentParser(prog="python -m inferlab.tools.notebooks")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="source (.py percent format) -> executed notebook")
    b.add_argument("sources", nargs="+", type=Path)
    b.add_argument("--out", type=Path, default=Path("notebooks"))
    b.add_argument("--no-execute", action="store_true")
    r = sub.add_parser("run", help="execute every notebook headless; table of seconds / peak RSS / status")
    r.add_argument("folder", type=Path, nargs="?", default=Path("notebooks"))
    r.add_argument("--out", type=Path, default=Path("build"))
    r.add_argument("--pattern", default="*.ipynb")
    im = sub.add_parser("images", help="add the static PNG beside each plotly figure of stored notebooks (no re-run)")
    im.add_argument("paths", nargs="+", type=Path)
    c = sub.add_parser("check", help="hygiene checks of stored notebooks")
    c.add_argument("folder", type=Path, nargs="?", default=Path("notebooks"))
    args = parser.parse_args(argv)
    if args.cmd == "build":
        for src in args.sources:
            t0 = time.perf_counter()
            path = build(src, args.out, run=not args.no_execute)
            print(f"built {path} in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.cmd == "run":
        return run_all(args.folder, args.out, args.pattern)
    if args.cmd == "images":
        import nbformat

        for path in args.paths:
            write(add_static_images(nbformat.read(path, as_version=4)), path)
            print(f"static images added to {path}")
        return 0
    bad = 0
    for path in sorted(args.folder.glob("*.ipynb")):
        problems = check_notebook(path)
        bad += bool(problems)
        print(f"{path.name}: {'ok' if not problems else '; '.join(problems)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
