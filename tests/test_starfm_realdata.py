"""STARFM on real data (Kranj reflectance, Yanco LST) through examples/starfm_real_data.py.

The example is imported from its path and run as users run it; STARFM must beat persistence
(the fine image of the pair date) on RMSE at every target and stay sane (finite metrics,
correlated with the truth, close to the values the issue quotes for the naive baselines).
Kranj (44 x 45 px) also runs with the USDA window of 750 m (50 px, larger than the image)
through the API and the CLI: the window is clipped to the image as the USDA program does.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time

import numpy as np
import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "starfm_real_data.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("starfm_real_data", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def overall(table, method, metric):
    return float(table[method][metric].sel(band="overall"))


def test_kranj(example, shared_data):
    res = example.kranj(shared_data)
    assert sorted(res) == ["2020-03-17", "2020-04-02"]  # DOY 077 and 093
    for day, table in res.items():
        rmse = {m: overall(table, m, "rmse") for m in table}
        assert rmse["starfm"] < 0.85 * rmse["fine at pair date"], (day, rmse)
        assert rmse["starfm"] < 0.6 * rmse["coarse at target"], (day, rmse)
        assert 100 < rmse["starfm"] < 250, (day, rmse)  # x1e4 reflectance
        assert overall(table, "starfm", "r") > 0.9
        assert overall(table, "starfm", "ssim") > overall(table, "fine at pair date", "ssim")
        assert overall(table, "starfm", "ssim") > overall(table, "coarse at target", "ssim")


def test_yanco_lst(example, shared_data):
    (table,) = example.yanco(shared_data).values()
    rmse = {m: overall(table, m, "rmse") for m in table}
    # the data README quotes the naive baselines: coarse ~5.2 K, fine at the pair ~8.9 K
    assert rmse["coarse at target"] == pytest.approx(5.2, abs=0.1)
    assert rmse["fine at pair date"] == pytest.approx(8.9, abs=0.1)
    assert rmse["starfm"] < rmse["fine at pair date"] and rmse["starfm"] < rmse["coarse at target"]
    assert 4.0 < rmse["starfm"] < 5.2
    assert overall(table, "starfm", "r") > 0.4
    assert overall(table, "starfm", "ssim") > overall(table, "coarse at target", "ssim")


def test_example_runs_fast_and_prints_the_tables(example, shared_data, capsys):
    t0 = time.perf_counter()
    results = example.main(shared_data)
    assert time.perf_counter() - t0 < 60
    out = capsys.readouterr().out
    assert out.count("\nmethod ") == 3 and "starfm" in out and "fine at pair date" in out
    for per_date in results.values():
        for table in per_date.values():
            assert all(math.isfinite(overall(table, m, k)) for m in table for k in ("rmse", "r"))


KRANJ = {"fine": {"2020-03-08": "landsat/filled/2020068_191-28.tif_filled_kranj.tif"},
         "coarse": {"2020-03-08": "modis/filled/2020068_18-04_kranj.tif",
                    "2020-03-17": "modis/filled/2020077_18-04_kranj.tif"}}  # fmt: skip


def _scaled_modis(shared_data, tmp_path):
    """Kranj paths with the MODIS files x 1e4 (the Landsat unit), written to tmp_path."""
    import rasterio

    k = os.path.join(shared_data, "kranj")
    out = {"fine": {d: os.path.join(k, p) for d, p in KRANJ["fine"].items()}, "coarse": {}}
    for date, rel in KRANJ["coarse"].items():
        with rasterio.open(os.path.join(k, rel)) as src:
            prof, data = src.profile, src.read()
        data = np.where(data < -1e30, data, data * 1e4).astype(np.float32)
        path = tmp_path / f"modis_{date}.tif"
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
        out["coarse"][date] = str(path)
    return out


@pytest.fixture(scope="module")
def kranj_750(tmp_path_factory):
    from conftest import SHARED_DATA

    import xfusion
    from xfusion.cube import from_geotiffs

    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    paths = _scaled_modis(SHARED_DATA, tmp_path_factory.mktemp("kranj"))
    cube = from_geotiffs(**paths)
    fine = [v for v in cube.data_vars if v.startswith("fine")]
    coarse = [v for v in cube.data_vars if v.startswith("coarse")]
    pred = xfusion.starfm(cube, fine=fine, coarse=coarse, resolution=30)  # USDA: 750 m
    return {"paths": paths, "cube": cube, "fine": fine, "coarse": coarse, "pred": pred}


def test_kranj_window_larger_than_the_image_api(kranj_750, shared_data):
    import rasterio
    import xarray as xr

    import xfusion
    from xfusion.methods._starfm_kernel import similarity_threshold, starfm_block

    cube, pred, fine, coarse = (kranj_750[k] for k in ("cube", "pred", "fine", "coarse"))
    assert cube.sizes["y"] == 44 and cube.sizes["x"] == 45
    assert json.loads(pred.attrs["xfusion_starfm"])["window"] == 50  # > 44 and 45 px
    # the whole image is one window's reach: the kernel on the whole image, no halo
    for name, cname in zip(fine, coarse, strict=True):
        L = cube[name].values[0]
        M1, M2 = cube[cname].values[0], cube[cname].values[1]
        want = starfm_block(L, M1, M2, window=50, thresholds=similarity_threshold(L),
                            distance_scale=25.0, fill_value=np.nan)  # fmt: skip
        np.testing.assert_array_equal(pred[name].values[0], want)
        assert np.isfinite(want).all()
    # chunked (the halo of 25 px exceeds the 16 px chunks) gives the same bits
    lazy = xfusion.starfm(cube.chunk({"y": 16, "x": 20}), fine=fine, coarse=coarse, resolution=30)
    xr.testing.assert_identical(lazy.compute(), pred)
    # and it predicts: better than the fine image of the pair date against the truth (DOY 077)
    truth_path = os.path.join(shared_data, "kranj", "landsat", "filled",
                              "2020077_190-28.tif_filled_kranj.tif")  # fmt: skip
    with rasterio.open(truth_path) as src:
        truth = src.read().astype(np.float64)
    got = np.stack([pred[n].values[0] for n in fine])
    persistence = np.stack([cube[n].values[0] for n in fine])
    rmse = [float(np.sqrt(np.mean((x - truth) ** 2))) for x in (got, persistence)]
    assert rmse[0] < 0.9 * rmse[1], rmse


def test_kranj_window_larger_than_the_image_cli(kranj_750, tmp_path):
    import rasterio

    from xfusion.cli import main

    paths, pred, fine = kranj_750["paths"], kranj_750["pred"], kranj_750["fine"]
    out = tmp_path / "kranj_077.tif"
    argv = ["fuse", "starfm", "--out", str(out), "--param", "resolution=30"]
    argv += [a for d, p in paths["fine"].items() for a in ("--fine", f"{d}={p}")]
    argv += [a for d, p in paths["coarse"].items() for a in ("--coarse", f"{d}={p}")]
    assert main(argv) == 0
    with rasterio.open(out) as src:
        assert src.count == len(fine) and src.dtypes[0] == "float32"  # float in, float out
        got = src.read()
    np.testing.assert_array_equal(got, np.stack([pred[n].values[0] for n in fine]))
