"""``xfusion super-resolve`` on GeoTIFFs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr

from xfusion.cli import main
from xfusion.methods.super_resolve import super_resolve
from xfusion.testing import synthetic_scene


def _write(da, path):
    da = da.rio.write_crs(da.odc.crs.to_wkt())
    da.rio.to_raster(path)
    return str(path)


@pytest.fixture(scope="module")
def tifs(tmp_path_factory):
    d = tmp_path_factory.mktemp("srcli")
    sc, modis = synthetic_scene((64, 64), times=["2021-07-15T10:30"], coarse_factor=4,
                                ndvi=True, coarse_native=True, coarse_cloud_fraction=0.0,
                                seed=4)
    lst = modis["coarse"].isel(time=0, drop=True).rename("lst")
    ndvi = sc["ndvi"].isel(time=0, drop=True)
    return d, lst, ndvi, _write(lst, d / "lst.tif"), _write(ndvi, d / "ndvi.tif")


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.descriptions, src.transform, src.crs


def test_bicubic_and_dms_match_the_functions(tifs):
    d, lst, ndvi, ctif, gtif = tifs
    for method, params in (("bicubic", []), ("dms", ["--param", "window=4",
                                                     "--param", "residual=bilinear"])):
        out = str(d / f"{method}.tif")
        assert main(["super-resolve", method, "--coarse", ctif, "--guide", gtif, "--scale",
                     "4", "--out", out, *params]) == 0
        data, desc, transform, crs = _read(out)
        kw = {"params": {"window": 4, "residual": "bilinear"}} if method == "dms" else {}
        ref = super_resolve(lst, guide=ndvi, method=method, **kw)
        np.testing.assert_allclose(data[0], ref.values, atol=1e-4)
        assert transform == ndvi.odc.geobox.affine and crs.to_epsg() == 32633
        assert desc == ("lst",)


def test_sif_trains_first_without_weights(tifs, capsys):
    pytest.importorskip("torch")
    d, lst, ndvi, ctif, gtif = tifs
    out = str(d / "sif.tif")
    params = ["epochs=1", "steps_per_epoch=1", "batch_size=2", "patch=32", "width=4",
              "device=cpu", "tile=32"]
    args = ["super-resolve", "sif-sr1", "--coarse", ctif, "--guide", gtif, "--out", out]
    assert main([*args, *[x for p in params for x in ("--param", p)]]) == 0
    text = capsys.readouterr().out
    assert "training sif-sr1 self-supervised" in text and "wrote 1 band(s)" in text
    weights = str(d / "sif.weights.safetensors")
    data, *_ = _read(out)
    ref = super_resolve(lst, guide=ndvi, weights=weights)
    np.testing.assert_allclose(data[0], ref.values, atol=1e-3)
    again = str(d / "sif2.tif")
    assert main(["super-resolve", "sif-sr1", "--coarse", ctif, "--guide", gtif, "--out", again,
                 "--weights", weights]) == 0
    np.testing.assert_allclose(_read(again)[0][0], ref.values, atol=1e-3)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["nearest"], 2, "unknown METHOD 'nearest'"),
        (["dms", "--param", "windw=3"], 2, "unknown --param 'windw'"),
        (["dms", "--param", "residual=block"], 2, "invalid value 'block' for residual"),
        (["harmonize"], 2, "needs --weights"),
        (["dms", "--scale", "3"], 1, "not nested by scale=3"),
    ],
)
def test_usage_and_input_errors(tifs, capsys, argv, code, message):
    d, _, _, ctif, gtif = tifs
    method, *rest = argv
    full = ["super-resolve", method, "--coarse", ctif, "--guide", gtif, "--out",
            str(d / "err.tif"), *rest]
    assert main(full) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_refuses_to_overwrite(tifs, capsys):
    d, _, _, ctif, _gtif = tifs
    out = d / "exists.tif"
    out.write_bytes(b"")
    assert main(["super-resolve", "bicubic", "--coarse", ctif, "--out", str(out),
                 "--scale", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["super-resolve", "bicubic", "--coarse", ctif, "--out", str(out), "--scale",
                 "2", "--overwrite"]) == 0
    with xr.open_dataarray(str(out), engine="rasterio") as a:
        assert a.shape == (1, 32, 32)


def test_sif_variant_param_selects_the_paper_variant(tifs, capsys):
    pytest.importorskip("torch")
    from xfusion.training import read_metadata

    d, _lst, _ndvi, ctif, gtif = tifs
    out = str(d / "paper.tif")
    params = ["variant=paper", "epochs=1", "steps_per_epoch=1", "batch_size=2", "patch=32",
              "width=4", "device=cpu", "tile=32"]
    args = ["super-resolve", "sif-sr1", "--coarse", ctif, "--guide", gtif, "--out", out]
    assert main([*args, *[x for p in params for x in ("--param", p)]]) == 0
    meta = read_metadata(str(d / "paper.weights.safetensors"))
    assert meta["variant"] == "paper" and meta["arch_params"].get("kind", "unet") == "unet"
    assert "training sif-sr1 self-supervised" in capsys.readouterr().out
