# Two entry points, both self-contained on a fresh Debian machine with Python 3.11:
#   make demo  -- the real recipe rehearsed end to end on the rehearsal set (built from the embedded NIH sample)
#   make lint test  -- lint, format and type checks, then the test suite (what CI runs)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No code may reach a model hub; DeepSpeed runs on the CPU accelerator unless a GPU job says otherwise.
export HF_HUB_OFFLINE := 1
export DS_ACCELERATOR ?= cpu

.PHONY: demo demo-nih lint test venv clean-venv

# The stamp depends on pyproject.toml, so a changed dependency list reinstalls.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; cxrlt needs Python 3.11" >&2; exit 1; }
	@# Debian ships the venv module separately (python3.11-venv); install it when we can.
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv; \
	  else echo "error: $(PYTHON) lacks ensurepip; install python3.11-venv" >&2; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	@# torch first: deepspeed's setup imports torch, and building it without build isolation keeps pip
	@# from fetching a second multi-GB torch into a throw-away build environment.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1 setuptools wheel
	$(BIN)/pip install --disable-pip-version-check -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Lint, format and types, one configuration for the whole tree (pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest

# The real recipe (configs/mimic-cxr-lt-2024.toml) at CPU size (configs/rehearsal.toml) on a
# MIMIC-CXR-LT-shaped tree made from the embedded images; a rerun reuses the tree and finished steps.
demo: $(STAMP)
	$(BIN)/cxrlt rehearsal make --out runs/rehearsal-data
	$(BIN)/cxrlt pipeline configs/rehearsal.toml

# The smaller, NIH-only demo (configs/demo.toml): single-view images, Task 1 only.
demo-nih: $(STAMP)
	$(BIN)/cxrlt pipeline configs/demo.toml

clean-venv:
	rm -rf $(VENV)
