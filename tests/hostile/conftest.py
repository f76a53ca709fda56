import pytest

from . import _harness


@pytest.fixture(scope="session", autouse=True)
def _hostile_worker():
    """One worker process for the whole session's library cases, stopped at the end."""
    yield
    _harness._stop_worker()
