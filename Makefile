# inferlab: two commands to start (`make lab`, `make test`); everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.inferlab-installed
EXTRAS ?= dev,serve,quant,lab
# A CPU build of torch where there is no CUDA: on this machine kind `torch==2.13.0`
# resolves to a local CPU wheel, while an uncapped `torch` would pull a multi-GB CUDA build.
TORCH_CPU_SPEC ?= torch==2.13.0

export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
# Offline only where only the embedded models are used (tests, notebook runs and builds); never for
# `make lab`, where a hub id such as Qwen/Qwen2.5-0.5B must download.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# setuptools prints a page of notes on every editable install; they are not errors.
QUIET_PIP := PYTHONWARNINGS=ignore

.PHONY: lab test unit notebooks run install bench clean lint models

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	    echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install -q torch; \
	else \
	    $(BIN)/python -m pip install -q "$(TORCH_CPU_SPEC)"; \
	fi
	$(QUIET_PIP) $(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (inferlab)" >/dev/null
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

## unit tests, then every notebook re-executed by nbval
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest tests -q
	$(OFFLINE) $(BIN)/python -m pytest -q --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks

unit: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest tests -q

notebooks: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks

## execute every notebook headless into build/, print seconds / peak RSS / status
run: $(STAMP)
	$(OFFLINE) $(BIN)/python -m inferlab.tools.notebooks run notebooks --out build

## re-execute the notebook sources and store them with outputs (maintainers)
build-notebooks: $(STAMP)
	$(OFFLINE) $(BIN)/python -m inferlab.tools.notebooks build notebooks/src/*.py --out notebooks

models: $(STAMP)
	$(BIN)/python -m inferlab.tools.train_tiny train --out data/models

lint: $(STAMP)
	$(BIN)/python -m ruff check lib tests

clean:
	rm -rf build .pytest_cache
