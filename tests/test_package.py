from __future__ import annotations

import inspect
import subprocess
import sys

import xarray as xr

import xfusion
from xfusion.accessor import FusionDataArrayAccessor, FusionDatasetAccessor


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=120)


def test_import_does_not_import_torch():
    res = _run("import sys, xfusion, xarray as xr; "
               "assert hasattr(xr.Dataset, 'fusion'); "
               "print('torch' in sys.modules)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_import_works_without_torch():
    res = _run("import sys; sys.modules['torch'] = None; import xfusion, xfusion.engine; "
               "from xfusion.config import EngineConfig; EngineConfig(); print('ok')")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_missing_torch_gives_install_hint():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from xfusion.engine.device import resolve_device\n"
            "try:\n    resolve_device('auto')\n"
            "except ImportError as e:\n    print(type(e).__name__, e)\n")
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert "MissingOptionalDependency" in res.stdout
    assert "pip install 'xfusion[torch]'" in res.stdout


def test_version():
    assert isinstance(xfusion.__version__, str) and xfusion.__version__[0].isdigit()


def _public_methods(cls):
    return {n: m for n, m in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_accessors_registered():
    assert xr.Dataset.fusion is FusionDatasetAccessor
    assert xr.DataArray.fusion is FusionDataArrayAccessor


def test_accessor_methods_are_documented_delegates():
    for cls in (FusionDatasetAccessor, FusionDataArrayAccessor):
        for name, meth in _public_methods(cls).items():
            func = meth.__wrapped__
            assert meth.__doc__ == func.__doc__, name
            assert meth.__doc__ and len(meth.__doc__.strip()) > 40, name
            # every accessor method is also available in the functional API
            assert getattr(xfusion, func.__name__, None) is func or func.__module__.startswith(
                "xfusion."
            ), name
