import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread per test process: the suite's models are tiny, and `make test` runs two
    pytest workers on a 2-core machine, where extra OpenMP threads only spin and wait."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
