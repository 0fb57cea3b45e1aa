"""The GPU tier: `pytest -m gpu tests/gpu` on a CUDA machine. Without CUDA every test here is skipped with the
reason, so `make test` stays green on CPU machines."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" not in item.nodeid:
            continue
        item.add_marker(pytest.mark.gpu)
        if not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="GPU tier: needs CUDA (torch.cuda.is_available() is False)"))
