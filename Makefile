# The command index. `make quickstart` and `make test` install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= outputs/quickstart

.PHONY: install quickstart seeds test test-slow test-compat test-engines engines style bench

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

quickstart: install
	$(PYTHON) recipes/quickstart.py --output_dir $(OUT)

# The quickstart on curriculum seeds 0-4, then mean / min / max of every metric (recipes/seeds.py; about 5x the quickstart).
seeds: install
	$(PYTHON) recipes/seeds.py --output_dir outputs/seeds

# The default suite on one worker process per core, at most 4 (pytest-xdist; each worker gets its share of the
# threads, tests/conftest.py): 156 s on 2 cores against 392-447 s in one process (tests/forkrun.py included).
test: install
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4

test-slow: install
	$(PYTHON) -m pytest -q -m slow

# The default suite on the lowest versions setup.cfg allows and on the newest releases on PyPI (see .ci/compat.sh).
test-compat:
	bash .ci/compat.sh lowest latest

engines:
	bash .ci/engines.sh

test-engines: install engines
	$(PYTHON) -m pytest -q -m "vllm or llamacpp or go"

style:
	ruff check . && ruff format --check .

bench: install
	$(PYTHON) benchmarks/moe_vs_dense.py --threads 1
	$(PYTHON) benchmarks/pretrain_throughput.py --threads 1
	$(PYTHON) benchmarks/train_levers.py --threads 2
	$(PYTHON) benchmarks/serve_load.py --threads 1 --clients 64
