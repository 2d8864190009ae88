# Two entry points: `make demo` and `make test`. Each creates .venv where it is missing,
# installs langmim with its dependencies, makes sure Fashion-MNIST is on disk, then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.langmim-installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-all install data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || bash scripts/check_disk.sh $(dir $(abspath $(VENV)))
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

data: $(STAMP)
	@bash scripts/ensure_fashion_mnist.sh $(PY)

demo: data
	$(VENV)/bin/langmim demo $(ARGS)

test: data
	$(PY) -m pytest -q $(ARGS)

test-all: data
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

clean:
	rm -rf runs/demo
