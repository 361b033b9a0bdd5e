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


@pytest.fixture(autouse=True)
def seeded():
    """Each test starts from the same random state, whichever xdist worker runs it and in whatever order,
    so a tolerance that holds once holds on every run."""
    torch.manual_seed(0)
    yield
