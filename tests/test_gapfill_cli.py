"""``xfusion gapfill``: GeoTIFF stacks and Zarr cubes in, Zarr or GeoTIFF out; usage errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import requires_torch
from rasterio.transform import from_origin

from xfusion.cli import main
from xfusion.io import open_zarr, to_zarr
from xfusion.testing import synthetic_series

T = from_origin(500000, 5100000, 10, 10)


def write_tif(path, data, *, transform=T, descriptions=None):
    data = np.asarray(data, dtype="float32")
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", count=data.shape[0], height=data.shape[1],
                       width=data.shape[2], dtype="float32", crs="EPSG:32633",
                       transform=transform, nodata=np.nan) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return str(path)


@pytest.fixture(scope="module")
def series():
    return synthetic_series((8, 9), seed=4).isel(time=slice(0, 12))


@pytest.fixture
def stack(series, tmp_path):
    opt, sar = [], []
    for k, t in enumerate(series.time.values):
        d = str(t)[:10]
        opt += ["--optical", f"{d}={write_tif(tmp_path / f'ndvi_{k}.tif', series.ndvi[k])}"]
        s = np.stack([series.vh_db[k], series.rvi[k]])
        sar += ["--sar", f"{d}={write_tif(tmp_path / f'sar_{k}.tif', s, descriptions=['vh_db', 'rvi'])}"]
    return opt, sar


def test_linear_geotiffs_to_geotiff(series, stack, tmp_path, capsys):
    opt, _ = stack
    out = tmp_path / "filled.tif"
    assert main(["gapfill", *opt, "--method", "linear", "--out", str(out), "--chunks", "4"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed
    from xfusion import gapfill

    ref = gapfill(series, method="linear")
    # the summary: per time step, the share valid after filling and the share filled
    for k in (0, len(series.time) // 2):
        label = str(series.time.values[k])[:10]
        valid = 100 * float(ref.ndvi[k].notnull().mean())
        filled = 100 * float(ref.ndvi_filled[k].mean())
        assert f"  {label}: ndvi {valid:.1f} % valid, {filled:.1f} % filled" in printed
    assert (tmp_path / "filled.stac.json").exists()  # described next to it
    with rasterio.open(out) as src:
        got = src.read()
        assert src.count == 12 and src.descriptions[0] == str(series.time.values[0])[:10]
    np.testing.assert_array_equal(got, ref.ndvi.values)
    with rasterio.open(tmp_path / "filled_filled.tif") as src:
        np.testing.assert_array_equal(src.read() == 1, ref.ndvi_filled.values)
    assert (tmp_path / "filled_uncertainty.tif").exists()


@requires_torch
def test_stori_geotiffs_to_zarr_and_saved_weights(series, stack, tmp_path):
    opt, sar = stack
    out = tmp_path / "filled.zarr"
    w = tmp_path / "w.safetensors"
    args = ["gapfill", *opt, *sar, "--out", str(out), "--param", "variant=fixed", "--param",
            "hidden=4", "--param", "epochs=1", "--save-weights", str(w)]
    assert main(args) == 0
    res = open_zarr(str(out))
    assert {"ndvi", "ndvi_filled", "ndvi_uncertainty"} <= set(res.data_vars)
    obs = series.ndvi.notnull().values
    np.testing.assert_array_equal(res.ndvi.values[obs], series.ndvi.values[obs])
    assert np.isfinite(res.ndvi.values).all() and w.exists()
    again = tmp_path / "again.zarr"
    assert main(["gapfill", *opt, *sar, "--out", str(again), "--weights", str(w)]) == 0
    xr.testing.assert_allclose(open_zarr(str(again)).ndvi, res.ndvi)


def test_zarr_cube_input(series, tmp_path):
    cube = tmp_path / "cube.zarr"
    to_zarr(series[["ndvi", "vh_db", "rvi"]].chunk({"time": 4}), str(cube))
    out = tmp_path / "out.zarr"
    assert main(["gapfill", "--input", str(cube), "--optical-var", "ndvi", "--method",
                 "harmonic", "--param", "harmonics=1", "--out", str(out)]) == 0
    from xfusion import gapfill

    ref = gapfill(series, method="harmonic", harmonics=1)
    np.testing.assert_allclose(open_zarr(str(out)).ndvi.values, ref.ndvi.values, rtol=1e-6)


def test_usage_and_input_errors(series, stack, tmp_path, capsys):
    opt, sar = stack
    out = str(tmp_path / "x.zarr")
    assert main(["gapfill", *opt, "--method", "kriging", "--out", out]) == 2
    assert "unknown --method 'kriging'" in capsys.readouterr().err
    assert main(["gapfill", *opt, "--method", "savgol", "--param", "harmonics=2",
                 "--out", out]) == 2
    assert "unknown --param 'harmonics' for method 'savgol'" in capsys.readouterr().err
    assert main(["gapfill", *opt, "--out", out]) == 2  # stori without SAR
    assert "--method stori needs SAR features" in capsys.readouterr().err
    assert main(["gapfill", "--input", "c.zarr", "--out", out]) == 2
    assert "--input needs --optical-var" in capsys.readouterr().err
    assert main(["gapfill", *opt, *sar[:-2], "--method", "linear", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "TimeAxisError" in err and "must share their dates" in err
    assert main(["gapfill", *opt, "--method", "linear", "--out", str(tmp_path / "x.png")]) == 2


def test_default_stori_residual_without_torch_options(series, stack, tmp_path):
    opt, sar = stack
    out = tmp_path / "default.zarr"
    assert main(["gapfill", *opt, *sar, "--out", str(out), "--chunks", "4", "--param",
                 "rounds=20"]) == 0
    res = open_zarr(str(out))
    obs = series.ndvi.notnull().values
    np.testing.assert_array_equal(res.ndvi.values[obs], series.ndvi.values[obs])
    assert np.isfinite(res.ndvi.values).all()


def test_ctrl_c_is_a_clean_exit(stack, tmp_path, capsys, monkeypatch):
    import xfusion.methods.gapfill as gapfill_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gapfill_module, "gapfill", interrupted)
    opt, sar = stack
    assert main(["gapfill", *opt, *sar, "--out", str(tmp_path / "x.zarr")]) == 130
    err = capsys.readouterr().err
    assert "xfusion: interrupted (Ctrl-C)" in err
    assert "Traceback" not in err


def test_training_interrupted_exits_130_with_its_reason(stack, tmp_path, capsys, monkeypatch):
    import xfusion.methods.gapfill as gapfill_module
    from xfusion.training.progress import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("STORI training was interrupted before its first validation")

    monkeypatch.setattr(gapfill_module, "gapfill", interrupted)
    opt, sar = stack
    assert main(["gapfill", *opt, *sar, "--out", str(tmp_path / "x.zarr")]) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) (STORI training was interrupted before its first" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "expected"), [("none", None), ("7", 7)])
def test_patience_none_reaches_the_config(stack, tmp_path, monkeypatch, text, expected):
    import xfusion.methods.gapfill as gapfill_module

    seen = {}

    def capture(ds, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop here: only the configuration is checked

    monkeypatch.setattr(gapfill_module, "gapfill", capture)
    opt, sar = stack
    assert main(["gapfill", *opt, *sar, "--out", str(tmp_path / "x.zarr"), "--param",
                 f"patience={text}"]) == 130
    assert seen["config"].patience == expected
