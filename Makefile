# Two commands for a newcomer: `make demo` and `make test` (each sets everything up first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo test test-fast bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's package when apt is usable; otherwise the demo falls back to digits.
data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		echo "Fashion-MNIST: installed (dataset-fashion-mnist)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
		&& echo "Fashion-MNIST: installed dataset-fashion-mnist" \
		|| echo "Fashion-MNIST: apt-get failed; the demo will use scikit-learn's digits"; \
	else \
		echo "Fashion-MNIST: apt not usable (needs root); the demo will use scikit-learn's digits"; \
	fi

demo: setup
	$(BIN)/selfsup demo

# One pytest worker per core, each on one thread (tests/conftest.py); idle workers take queued tests
# from busy ones (worksteal), so the long end-to-end runs do not pile up on one worker; the 15
# slowest tests are listed so that CI logs show where its 20-minute budget goes.
test: setup
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=15

# The same without the end-to-end training tests marked slow (pyproject.toml's markers): a few minutes.
test-fast: setup
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow"

# pyflakes, import order, bugbear, pyupgrade (pyproject.toml [tool.ruff])
lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/byol_fmnist.py

clean:
	rm -rf $(VENV) runs .pytest_cache
