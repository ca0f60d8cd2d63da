import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: intra-op threads only add synchronisation cost (and thrash on a shared machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
