"""The real Planetary Computer path (opt-in: ``pytest --run-network tests/test_network_pc.py``).

Skipped unless ``--run-network`` is given: CI has no network. It runs the README quickstart
verbatim and the example job on a small area against https://planetarycomputer.microsoft.com,
so users can check the real path where they have a network. The offline twin of each check,
on items shaped like the real ones, is ``tests/test_stac_real_shapes.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import xfusion

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```python\n(.*?)```", text[text.index(title):], re.DOTALL)
    assert m is not None
    return m.group(1)


def _on_stored_values(values, scale=0.00341802, offset=149.0):
    dn = (np.asarray(values, dtype=np.float64) - offset) / scale
    dn = dn[np.isfinite(dn)]
    return np.abs(dn - np.rint(dn)).max() < 0.02


def test_readme_quickstart_against_the_planetary_computer(tmp_path, monkeypatch):
    monkeypatch.delenv("XFUSION_STAC_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    code = _readme_block("## Quickstart: a real cube from the Planetary Computer")
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102  (the README's own code)
    cube, pairs = ns["cube"], ns["pairs"]
    g = cube.odc.geobox
    assert g.crs.epsg == 32755 and abs(g.affine.a) == 30
    # Landsat pixels read, not resampled: the values are stored DN x scale + offset
    date = pairs[0]
    assert _on_stored_values(cube.fine.sel(time=date).values)
    coarse = cube.coarse.sel(time=date).values
    assert np.isfinite(coarse).mean() > 0.5 and 250 < np.nanmean(coarse) < 340
    back = xfusion.io.open_zarr(tmp_path / "yanco_lst_starfm.zarr")
    assert back.odc.crs.epsg == 32755 and np.isfinite(back.fine.values).any()


def test_example_job_on_a_small_area(tmp_path, monkeypatch):
    monkeypatch.delenv("XFUSION_STAC_URL", raising=False)
    doc = yaml.safe_load((ROOT / "examples" / "tahoe_starfm_job.yaml").read_text())
    doc["aoi"] = {"bbox": [-120.05, 39.05, -119.98, 39.10]}  # ~6 x 5.5 km by the lake
    doc["grid"]["tile"] = 128
    doc["output"] = {"store": str(tmp_path / "tahoe.zarr"), "chunk": 128}
    doc["targets"] = doc["targets"][:1]
    report = xfusion.run(doc, client=False, progress=False)
    assert report.ok, report
    again = xfusion.run(doc, client=False, progress=False)
    assert again.tiles_skipped == report.tiles_total
    out = xfusion.io.open_zarr(tmp_path / "tahoe.zarr")
    assert out.odc.crs.epsg == 32610 and (out.odc.geobox.affine.c - 15) % 30 == 0
