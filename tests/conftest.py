"""Fixtures shared by the test modules (helpers live in `tests/utils.py`)."""

import pytest

from tests.utils import VARIANTS


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param
