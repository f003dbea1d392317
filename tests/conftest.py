from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def pytest_addoption(parser):
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu")
    parser.addoption("--run-network", action="store_true", help="run tests marked network")


def pytest_collection_modifyitems(config, items):
    for mark, flag in (("gpu", "--run-gpu"), ("network", "--run-network")):
        if not config.getoption(flag):
            skip = pytest.mark.skip(reason=f"needs {flag}")
            for item in items:
                if mark in item.keywords:
                    item.add_marker(skip)


def _importorskip(name: str):
    has = importlib.util.find_spec(name) is not None
    return has, pytest.mark.skipif(not has, reason=f"requires {name}")


has_torch, requires_torch = _importorskip("torch")


@pytest.fixture(params=["numpy", "dask"])
def backend(request):
    """Run a test on numpy-backed and dask-backed inputs."""
    return request.param


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skip with a clear reason when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
