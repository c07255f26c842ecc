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
# threads, tests/conftest.py): 276-449 s on 2 cores (fast and slow days of this machine), about twice that in one process.
test: install
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4

# The slow tier in parts of at most 20 minutes on 2 cores, each its own pytest run (`make test-slow-bases`, ...;
# `make test-slow` runs them in turn). The bases part builds the effect tests' SFT bases into the on-disk cache
# (tests/utils.build_sft_base) and checks them; the effect parts after it start from the cache.
SLOW_PARTS := quickstart0 quickstart1 bases post rl reward
SLOW_quickstart0 := tests/test_quickstart.py -k seed0
SLOW_quickstart1 := tests/test_quickstart.py -k seed1
SLOW_bases := tests/test_sft_bases.py
SLOW_post := tests/test_post_training_effects.py
SLOW_rl := tests/test_rl_effects.py -k rl_raises
SLOW_reward := tests/test_rl_effects.py -k reward_model

test-slow: install
	$(foreach part,$(SLOW_PARTS),$(PYTHON) -m pytest -q -s -m slow $(SLOW_$(part)) &&) true

test-slow-%: install
	$(if $(SLOW_$*),,$(error no slow-tier part "$*": the parts are $(SLOW_PARTS)))
	$(PYTHON) -m pytest -q -s -m slow $(SLOW_$*)

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
	$(PYTHON) benchmarks/sft_throughput.py --threads 2
	$(PYTHON) benchmarks/dpo_throughput.py --threads 2
	$(PYTHON) benchmarks/train_levers.py --threads 2
	$(PYTHON) benchmarks/serve_load.py --threads 1 --clients 64
