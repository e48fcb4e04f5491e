# Set-up and test commands of the README. PYTHON picks the interpreter that creates the virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test

# torch and torchvision are pinned together: timm imports torchvision, which must match torch.
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[dev]'

test:
	$(BIN)/python -m pytest -q
