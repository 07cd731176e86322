# akd-edge: `make demo` installs everything and runs the quickstart; `make test` installs and runs the tests.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install install-dev data demo test lint bench clean

## Fashion-MNIST from Debian's dataset-fashion-mnist package, where apt exists.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST present in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y dataset-fashion-mnist || { $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; } \
	  || echo "warning: could not install dataset-fashion-mnist; real-data tests will be skipped"; \
	else echo "no apt-get: put the Fashion-MNIST IDX files in \$$AKD_EDGE_DATA or pass --set data.download=true"; fi

## torch first, pinned to the CPU wheel this machine holds; then the package and its dependencies.
install: data
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[plots]"

install-dev: data
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,plots]"

demo: install
	akd-edge distill --recipe fmnist-quickstart

test: install-dev
	$(PYTHON) -m pytest -q

lint:
	ruff check akd_edge tests benchmarks
	ruff format --check akd_edge tests benchmarks

bench:
	$(PYTHON) benchmarks/train_throughput.py

clean:
	rm -rf runs .pytest_cache
