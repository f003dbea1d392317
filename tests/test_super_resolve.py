"""super_resolve: grids, bicubic, the plumbing (laziness, chunk invariance, NaN), accessors.

SIF-CNN-SR (torch) is in test_super_resolve_sif.py, the CLI in test_super_resolve_cli.py.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

import xfusion
from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    TimeAxisError,
)
from xfusion.methods.super_resolve import (
    aggregate,
    bicubic_upsample,
    coarse_consistency,
    gradient_rmse,
    nested_grids,
    super_resolve,
)
from xfusion.testing import raise_if_dask_computes

CRS = "EPSG:32633"


def grid(shape, res, x0=500000.0, y0=4000000.0, crs=CRS):
    return GeoBox(shape, Affine(res, 0, x0, 0, -res, y0), crs)


def arr(data, gbox, name="v", time=None):
    dims = ("y", "x") if time is None else ("time", "y", "x")
    coords = dict(xr_coords(gbox))
    if time is not None:
        coords["time"] = np.asarray(time, dtype="datetime64[ns]")
    return xr.DataArray(data, dims=dims, coords=coords, name=name)


@pytest.fixture
def pair(rng):
    """Coarse 9 x 11 at 120 m and a fine guide 36 x 44 at 30 m (scale 4)."""
    c = arr(rng.normal(300, 3, (9, 11)).astype("float32"), grid((9, 11), 120.0), "lst")
    g = arr(rng.uniform(-0.2, 0.9, (36, 44)).astype("float32"), grid((36, 44), 30.0), "ndvi")
    return c, g


def chunked(a, chunks):
    return a.chunk(dict(zip(a.dims[-2:], chunks, strict=True)))


# ------------------------------------------------------------------------------- bicubic


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_matches_torch_interpolate(rng, scale):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 3, 7, 9)).astype("float32")
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=scale,
                                          mode="bicubic", align_corners=False).numpy()
    np.testing.assert_allclose(bicubic_upsample(x, scale), ref, atol=2e-6)


def _keys_reference(x, scale, a=-0.75):
    """Brute force: every fine pixel from its 4 x 4 coarse neighbours, edges replicated."""
    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    h, wd = x.shape
    out = np.zeros((h * scale, wd * scale))
    for i in range(h * scale):
        u = (i + 0.5) / scale - 0.5
        for j in range(wd * scale):
            v = (j + 0.5) / scale - 0.5
            for m in range(int(np.floor(u)) - 1, int(np.floor(u)) + 3):
                for n in range(int(np.floor(v)) - 1, int(np.floor(v)) + 3):
                    out[i, j] += w(u - m) * w(v - n) * x[min(max(m, 0), h - 1),
                                                         min(max(n, 0), wd - 1)]
    return out


def test_bicubic_brute_force_constants_and_symmetry(rng):
    x = rng.normal(size=(5, 6))
    np.testing.assert_allclose(bicubic_upsample(x, 3), _keys_reference(x, 3), atol=1e-5)
    np.testing.assert_array_equal(bicubic_upsample(np.full((5, 6), 7.0, "float32"), 3), 7.0)
    np.testing.assert_allclose(bicubic_upsample(x[::-1, ::-1], 4),
                               bicubic_upsample(x, 4)[::-1, ::-1], atol=1e-6)


def test_bicubic_nan_hole_stays_in_its_footprint(rng):
    x = rng.normal(size=(12, 12)).astype("float32")
    holed = x.copy()
    holed[5:7, 3:5] = np.nan
    a, b = bicubic_upsample(x, 3), bicubic_upsample(holed, 3)
    hole = np.zeros((36, 36), bool)
    hole[15:21, 9:15] = True
    assert np.isnan(b[hole]).all() and np.isfinite(b[~hole]).all()
    far = np.ones((36, 36), bool)  # more than 2 coarse px (the cubic support) from the hole
    far[(5 - 2) * 3:(7 + 2) * 3, (3 - 2) * 3:(5 + 2) * 3] = False
    np.testing.assert_array_equal(a[far], b[far])
    assert not np.allclose(a[~far & ~hole], b[~far & ~hole])  # neighbours do use the fill


def test_bicubic_chunk_invariance_is_exact(rng):
    x = rng.normal(size=(2, 23, 19)).astype("float32")
    x[1, 4:6, 7] = np.nan
    ref = bicubic_upsample(x, 4)
    for chunks in [(1, 5, 7), (2, 11, 4), (1, 23, 19)]:
        out = bicubic_upsample(da.from_array(x, chunks=chunks), 4)
        assert dask.is_dask_collection(out)
        np.testing.assert_array_equal(out.compute(), ref)


# ------------------------------------------------------------------------------- grids


def test_nested_grids_output_is_the_guide_grid(pair):
    c, g = pair
    ng = nested_grids(c, g)
    assert ng.scale == 4 and ng.offset == (0, 0)
    assert ng.fine == g.odc.geobox


def test_nested_grids_crops_a_larger_guide(rng):
    c = arr(np.ones((3, 4), "float32"), grid((3, 4), 90.0, x0=500090.0, y0=3999910.0))
    g = arr(np.ones((20, 20), "float32"), grid((20, 20), 30.0))
    ng = nested_grids(c, g, scale=3)
    assert ng.offset == (3, 3)
    assert ng.fine.shape == (9, 12)
    assert ng.fine.affine == Affine(30.0, 0, 500090.0, 0, -30.0, 3999910.0)
    out = super_resolve(c, guide=g, method="bicubic")
    assert out.odc.geobox == ng.fine
    np.testing.assert_array_equal(out.values, 1.0)


def test_nested_grids_without_guide_needs_scale(pair):
    c, _ = pair
    assert nested_grids(c, scale=2).fine.shape == (18, 22)
    with pytest.raises(InvalidParameterError, match="scale="):
        nested_grids(c)


@pytest.mark.parametrize(
    ("coarse_kw", "guide_kw", "scale", "err", "match"),
    [
        ({}, {}, 3, GridMismatchError, "not nested by scale=3"),
        ({}, {"res": 50.0}, None, GridMismatchError, "ratio 2.4"),
        ({"x0": 500010.0}, {}, None, GridMismatchError, "do not fall on guide pixel edges"),
        ({}, {"shape": (30, 44)}, None, GridMismatchError, "does not cover"),
        ({"x0": 499880.0}, {}, None, GridMismatchError, "does not cover"),
        ({}, {"crs": "EPSG:32632"}, None, CRSMismatchError, "different CRSs"),
    ],
)
def test_nested_grids_errors(coarse_kw, guide_kw, scale, err, match):
    c = arr(np.ones((9, 11), "float32"), grid((9, 11), **{"res": 120.0, **coarse_kw}))
    gk = {"shape": (36, 44), "res": 30.0, **guide_kw}
    gshape = gk.pop("shape")
    g = arr(np.ones(gshape, "float32"), grid(gshape, **gk))
    with pytest.raises(err, match=match):
        super_resolve(c, guide=g, scale=scale, method="bicubic")


def test_geographic_grids_use_latitude_longitude(rng):
    gc = GeoBox((6, 8), Affine(0.004, 0, 14.0, 0, -0.004, 46.3), "EPSG:4326")
    gf = GeoBox((24, 32), Affine(0.001, 0, 14.0, 0, -0.001, 46.3), "EPSG:4326")
    c = xr.DataArray(rng.normal(size=(6, 8)), dims=("latitude", "longitude"),
                     coords=xr_coords(gc), name="lst")
    g = xr.DataArray(rng.normal(size=(24, 32)), dims=("latitude", "longitude"),
                     coords=xr_coords(gf), name="ndvi")
    out = super_resolve(c, guide=g, method="bicubic")
    assert out.dims == ("latitude", "longitude") and out.odc.geobox == gf


# ------------------------------------------------------------------------------- plumbing


def test_bicubic_method_lazy_and_chunk_invariant(pair, backend):
    c, g = pair
    ref = super_resolve(c, guide=g, method="bicubic")
    if backend == "dask":
        c, g = chunked(c, (4, 5)), chunked(g, (16, 20))
        with raise_if_dask_computes():
            out = super_resolve(c, guide=g, method="bicubic")
        assert dask.is_dask_collection(out)
        layers = out.data.__dask_graph__().layers
        assert any(str(k).startswith("xfusion.super_resolve.bicubic-") for k in layers)
    else:
        out = ref
    assert out.name == "lst" and out.dims == ("y", "x")
    xr.testing.assert_identical(out.compute(), ref)
    assert out.attrs["super_resolve_method"] == "bicubic" and out.attrs["scale"] == 4


def test_two_calls_give_distinct_keys_on_different_data(pair):
    c, g = pair
    a = super_resolve(chunked(c, (4, 5)), guide=g, method="bicubic")
    b = super_resolve(chunked(c + 1, (4, 5)), guide=g, method="bicubic")
    assert a.data.name != b.data.name


def test_time_dim_static_and_dated_guides(pair, rng):
    c, g = pair
    t = ["2021-07-01", "2021-07-17"]
    ct = xr.concat([c, c + 1], dim="time").assign_coords(time=np.asarray(t, "datetime64[ns]"))
    out = super_resolve(ct, guide=g, method="bicubic")
    assert out.dims == ("time", "y", "x")
    np.testing.assert_allclose(out.isel(time=1) - out.isel(time=0), 1.0, atol=1e-4)
    gt = xr.concat([g, g], dim="time").assign_coords(time=ct.time)
    xr.testing.assert_identical(super_resolve(ct, guide=gt, method="bicubic"), out)
    with pytest.raises(TimeAxisError, match="no date"):
        super_resolve(ct, guide=gt.isel(time=[0]), method="bicubic")


def test_dataset_in_dataset_out(pair):
    c, g = pair
    ds = xr.Dataset({"lst": c, "lst2": c * 2})
    out = super_resolve(ds, guide=g, method="bicubic")
    assert isinstance(out, xr.Dataset) and set(out.data_vars) == {"lst", "lst2"}
    np.testing.assert_allclose(out.lst2, 2 * out.lst, rtol=1e-6)


def test_accessors_equal_function_and_share_docstring(pair):
    c, g = pair
    xr.testing.assert_identical(c.fusion.super_resolve(guide=g, method="bicubic"),
                                xfusion.super_resolve(c, guide=g, method="bicubic"))
    ds = c.to_dataset()
    xr.testing.assert_identical(ds.fusion.super_resolve(guide=g, method="bicubic"),
                                super_resolve(ds, guide=g, method="bicubic"))
    assert c.fusion.super_resolve.__doc__ == super_resolve.__doc__
    assert ds.fusion.super_resolve.__doc__ == super_resolve.__doc__
    assert ds.fusion.harmonize.__doc__ == xfusion.harmonize.__doc__


def test_bad_method_and_params(pair):
    c, g = pair
    with pytest.raises(InvalidParameterError, match="Unknown method='nearest'"):
        super_resolve(c, guide=g, method="nearest")
    with pytest.raises(InvalidParameterError, match="Valid keys"):
        super_resolve(c, guide=g, method="dms", params={"windw": 3})
    with pytest.raises(InvalidParameterError, match="needs guide="):
        super_resolve(c, method="dms", scale=4)
    with pytest.raises(InvalidParameterError, match="Valid keys"):
        super_resolve(c, guide=g, method="sif-sr1", params={"epochs": 3})


# ------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("how", ["mean", "power"])
def test_aggregate_inverts_nearest_upsampling(pair, how):
    c, g = pair
    up = arr(np.repeat(np.repeat(c.values, 4, 0), 4, 1), g.odc.geobox, "lst")
    agg = aggregate(up, scale=4, how=how, like=c)
    np.testing.assert_allclose(agg.values, c.values, rtol=1e-6)
    assert agg.odc.geobox == c.odc.geobox
    assert float(coarse_consistency(up, c, scale=4, how=how)) < 1e-3


def test_power_mean_exceeds_mean():
    fine = arr(np.array([[280.0, 320.0], [300.0, 300.0]]), grid((2, 2), 30.0))
    m = float(aggregate(fine, scale=2, how="mean")[0, 0])
    p = float(aggregate(fine, scale=2, how="power")[0, 0])
    assert m == pytest.approx(300.0) and p == pytest.approx(((280**4 + 320**4 + 2 * 300**4)
                                                             / 4) ** 0.25, rel=1e-6)


def test_gradient_rmse_known_values():
    ramp = np.add.outer(np.arange(6.0), np.zeros(6))
    assert gradient_rmse(ramp, ramp) == 0.0
    # a unit ramp: vertical Sobel 8, horizontal 0, the two diagonal ones -6 and 6
    assert gradient_rmse(ramp, np.zeros((6, 6))) == pytest.approx(np.sqrt(64.0 + 36 + 36))
