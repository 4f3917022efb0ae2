# Two commands: `make demo` sets up and runs the workflow on the embedded default (a synthetic
# world, CPU, offline); `make test` sets up and runs the tests. Both create .venv/ when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
# The tested PyTorch pair; on this project's machines pip takes them from the local disk.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

export HF_HUB_OFFLINE := 1
# Rules call `python`: make it the project's environment, activated or not.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lint clean-results

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) all

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install
	$(BIN)/ruff check fashionblip2 workflow_scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check fashionblip2 workflow_scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

clean-results:
	rm -rf data results logs models checkpoints .snakemake
