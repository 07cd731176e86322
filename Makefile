# akd-edge: `make demo` installs everything and distills the demo student; `make test` installs and runs the tests.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install install-dev data web-deps demo test lint bench clean

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
	$(PIP) install -e ".[dev,plots,openvino]"

## The browser test's tools (tests/test_web_export.py): Debian's chromium, and onnxruntime-web from npm into
## tests/web/node_modules (version pinned by tests/web/package-lock.json). Playwright's Python package comes
## with the dev extra and drives this chromium through executable_path: no `playwright install` download.
web-deps:
	@if command -v chromium >/dev/null || [ -n "$$AKD_EDGE_CHROMIUM" ]; then echo "chromium present"; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }; \
	else echo "no apt-get: install Chromium and set AKD_EDGE_CHROMIUM to its executable"; fi
	@if command -v npm >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y nodejs npm || { $(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm; }; \
	else echo "no npm: install Node.js and npm"; exit 1; fi
	@if [ tests/web/node_modules/.package-lock.json -nt tests/web/package-lock.json ]; then echo "onnxruntime-web present"; \
	else cd tests/web && npm ci --ignore-scripts --no-audit --no-fund; fi

## The demo recipe (fmnist-demo: 2 epochs, the teacher's outputs computed once) trains once: run again, it says
## the student is trained and what comes next; an interrupted demo is resumed (akd-edge distill --reuse).
demo: install
	$(PYTHON) -m akd_edge distill --recipe fmnist-demo --reuse
	@echo "The full quickstart (4 epochs, the README's figures) is one command away: akd-edge distill --recipe fmnist-quickstart"

## The browser test may not skip under `make test` (or CI): `make test AKD_EDGE_REQUIRE_BROWSER=` lets it.
AKD_EDGE_REQUIRE_BROWSER ?= 1
test: install-dev web-deps
	AKD_EDGE_REQUIRE_BROWSER=$(AKD_EDGE_REQUIRE_BROWSER) $(PYTHON) -m pytest -q

lint:
	ruff check akd_edge tests benchmarks
	ruff format --check akd_edge tests benchmarks

bench:
	$(PYTHON) benchmarks/train_throughput.py

clean:
	rm -rf runs .pytest_cache
