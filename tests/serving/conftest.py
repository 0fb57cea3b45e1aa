"""The serving tier: vLLM in its own environment (`make test-serving` builds `.venv-serving` and runs it).
Without that environment every test here is skipped with the reason, so `make test` stays self-contained."""

from pathlib import Path

import pytest

SERVING_PYTHON = Path(__file__).resolve().parents[2] / ".venv-serving" / "bin" / "python"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/serving/" not in item.nodeid:
            continue
        item.add_marker(pytest.mark.serving)
        if not SERVING_PYTHON.is_file():
            item.add_marker(pytest.mark.skip(reason=f"serving tier: no {SERVING_PYTHON} (make install-serving)"))
