import pytest

from . import _harness


@pytest.fixture(scope="package", autouse=True)
def _hostile_worker():
    """One worker process for all of this folder's library cases, stopped when they are done."""
    yield
    _harness._stop_worker()
