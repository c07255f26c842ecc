"""Fixtures shared by the test modules (helpers live in `tests/utils.py`)."""

import os

import pytest
import torch

from minimind_hf.tokenization import load_tokenizer
from tests.utils import VARIANTS, tiny_model


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory):
    """An untrained tiny model with the shipped tokenizer in a folder, for recipes that start from a saved model (TRL
    reloads GRPO's reference from it; the reward model starts its backbone from it)."""
    out = tmp_path_factory.mktemp("tiny-policy")
    tiny_model().save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


def pytest_configure(config):
    # Under pytest-xdist (`make test`: one worker per core), each worker and the processes its tests start get their
    # share of the cores: two workers with torch's default of one thread per core would each oversubscribe them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))
    # The marks transformers' common model tests carry (tests/test_transformers_common.py); known, so they do not warn.
    for mark in (
        "accelerate_tests",
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
    ):
        config.addinivalue_line("markers", f"{mark}: transformers' common-test mark")
