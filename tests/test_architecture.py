"""The shape of the package: import layers, module sizes, the method registry as single source."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xfusion.methods
from xfusion.cli import main
from xfusion.errors import JobError
from xfusion.methods import get
from xfusion.methods.registry import markdown_table

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 1000


def test_import_layer_contracts():
    """pyproject's [tool.importlinter] contracts: no cycles, layers, private modules."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (it is in the test dependencies)")
    res = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_no_module_over_1000_lines():
    long = {}
    for path in (ROOT / "xfusion").rglob("*.py"):
        if "testing" in path.relative_to(ROOT / "xfusion").parts:
            continue
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            long[str(path.relative_to(ROOT))] = n
    assert not long, long


def test_readme_table_is_the_registry():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- methods-table:start[^>]*-->\n(.*?)<!-- methods-table:end -->", text,
                  re.DOTALL)
    assert m is not None
    assert m.group(1) == markdown_table()


def test_registry_lists_every_method_and_resolves_it():
    names = xfusion.methods.available()
    assert {"baseline", "starfm", "sttfn", "sif-sr1", "dms", "bicubic", "harmonize", "stori",
            "linear", "savgol", "harmonic"} <= set(names)
    for name in names:
        method = get(name)
        assert callable(method.load()) and callable(method.load_function())
        assert method.help and all(p.help for p in method.params)
    with pytest.raises(xfusion.errors.InvalidParameterError, match="choose one of"):
        get("estarfmx")


def test_cli_help_and_job_errors_list_the_registry(capsys):
    assert main(["fuse", "--help"]) == 0
    out = capsys.readouterr().out
    for name in xfusion.methods.available("fusion"):
        assert f"  {name}: " in out
        for p in get(name).params:
            assert f"      {p.name}=..." in out
    with pytest.raises(JobError, match=re.escape(str(sorted(xfusion.methods.available(
            "fusion"))))):
        xfusion.Job(method="nope", store="x.zarr", time=("2020-01-01", "2020-02-01"),
                    bbox=(0, 0, 1, 1))


def test_job_halos_come_from_the_registry():
    starfm = get("starfm")
    # STARFM: the search distance in pixels, plus one (as before the registry)
    assert starfm.job_halo({}, resolution=30.0) == math.ceil(750 / 30) + 1
    assert starfm.job_halo({"preset": "lst"}, resolution=30.0) == math.ceil(1500 / 30) + 1
    assert starfm.job_halo({"max_search_distance": 300}, resolution=30.0) == 11
    pytest.importorskip("torch")
    from xfusion.models import build_model

    sttfn = get("sttfn")
    # the default variant ("xfusion") uses xfusion-v2 nets, variant="paper" xfusion-v1
    assert sttfn.job_halo({}, resolution=30.0) == build_model("xfusion-v2", 1).halo + 3
    assert sttfn.job_halo({"variant": "paper"}, resolution=30.0) == \
        build_model("xfusion-v1", 1).halo + 3
    assert sttfn.job_halo({"arch": "xfusion-v1"}, resolution=30.0) == \
        build_model("xfusion-v1", 1).halo + 3
    from xfusion.jobs.runner import _margin

    job = xfusion.Job(method="starfm", store="x.zarr", time=("2020-01-01", "2020-02-01"),
                      bbox=(0, 0, 1, 1), params={"preset": "lst"})
    assert _margin(job, 30.0) == 51


def test_models_alone_rebuild_every_architecture():
    """No registration by import side effect: a worker importing only xfusion.models can
    rebuild every built-in architecture."""
    pytest.importorskip("torch")
    code = (
        "import xfusion.models as m\n"
        "from xfusion.models.registry import BUILTIN_ARCHITECTURES\n"
        "names = [a.name for a in m.list_architectures()]\n"
        "assert names == sorted(a.name for a in BUILTIN_ARCHITECTURES), names\n"
        "for n in names:\n"
        "    m.build_model(n, 1 if n != 'sif-sr' else 2)\n"
        "print(sorted(names))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "xfusion-v1" in res.stdout and "stori" in res.stdout and "sif-sr" in res.stdout
