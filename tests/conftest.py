"""Fixtures shared by the test modules (helpers live in `tests/utils.py`)."""

import pytest

from tests.utils import VARIANTS


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


def pytest_configure(config):
    # The marks transformers' common model tests carry (tests/test_transformers_common.py); known, so they do not warn.
    for mark in (
        "accelerate_tests",
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
    ):
        config.addinivalue_line("markers", f"{mark}: transformers' common-test mark")
