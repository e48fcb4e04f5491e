# Set-up, main job and test commands of the README. PYTHON picks the interpreter that creates the virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart smoke test

# torch and torchvision are pinned together: timm imports torchvision, which must match torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The main job: `ct-ray quickstart` on the embedded defaults (local Ray on 127.0.0.1, the local MLflow store
# ./mlflow.db, generated synthetic data): data, a 12-block teacher, CompressTracker-4 and both baselines, evaluated on
# the held-out test sequences, one table. PRESET=full: the same teacher, students on twice the budget.
PRESET ?= small
quickstart: install
	$(BIN)/ct-ray quickstart --preset $(PRESET)

# A two-minute end-to-end check: tiny teacher, CompressTracker for 2 epochs, validation, MLflow.
smoke: install
	$(BIN)/ct-ray train --config experiments/smoke.yaml

test: install
	$(BIN)/python -m pytest -q
