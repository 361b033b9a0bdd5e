# Two commands for a newcomer:
#   make train   trains the default ViT on MNIST-5k (offline) and prints its test accuracy
#   make test    runs the test suite
# Both create or update the local virtual environment .venv from pyproject.toml when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test venv
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

train: venv
	$(BIN)/zoo fit --config configs/vit_mnist.yaml

test: venv
	$(BIN)/python -m pytest -q -n 2 --durations=25 tests
