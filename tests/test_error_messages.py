"""Pin the wording of every bad-input error of the cube contract, the builders and baseline.

Each message must say what was wrong, what was found, and how to fix it; these tests keep
that promise from eroding (xarray's test_error_messages.py idea).
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.transform import from_origin

from xfusion.cube import (
    RasterReadError,
    from_geotiffs,
    from_numpy,
    require_same_grid,
    validate_cube,
)
from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    MissingNodataError,
    NoOverlapError,
    TimeAxisError,
    VariableNotFoundError,
    XFusionError,
)
from xfusion.methods.baseline import baseline

GBOX = GeoBox((4, 5), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
TIMES = ["2020-01-01", "2020-01-05", "2020-01-09"]


def cube(**kw):
    a = np.ones((3, 4, 5), "float32")
    obs = kw.pop("observed", {"fine": [True, False, False], "coarse": [True, True, True]})
    return from_numpy({"fine": a, "coarse": a * 2}, geobox=GBOX, times=TIMES, observed=obs, **kw)


FINE_T = from_origin(500000, 4000000, 30, 30)


def write_tif(path, data, *, crs="EPSG:32633", transform=FINE_T):
    data = np.asarray(data)[None] if np.ndim(data) == 2 else np.asarray(data)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(data)
    return str(path)


# ---------------------------------------------------------------------------------------------
# the cube contract (xfusion.cube.validate)


def test_missing_time_dimension():
    ds = cube().isel(time=0, drop=True)
    with pytest.raises(
        MissingDimensionError,
        match=r"No time dimension on the cube\. Found dims \('y', 'x'\)\. .*ds\.expand_dims\(time=",
    ):
        validate_cube(ds, fine="fine", coarse="coarse")


def test_variable_without_time_dimension():
    ds = cube()
    ds["dem"] = ds.fine.isel(time=0, drop=True)
    with pytest.raises(
        MissingDimensionError, match=r"Variable 'dem' has no time dimension \(dims \('y', 'x'\)\)"
    ):
        validate_cube(ds, fine="fine", coarse="coarse", guides="dem")


def test_missing_spatial_dimensions():
    ds = xr.Dataset(
        {"fine": (("time", "row", "col"), np.ones((1, 2, 2)))},
        coords={"time": np.array(["2020-01-01"], "datetime64[ns]")},
    )
    with pytest.raises(
        MissingDimensionError,
        match=r"No spatial dimensions found on the cube \(Dataset\)\. Found dims \('time', 'row', 'col'\).*"
        r"ds\.rename\(\{'row': 'y', 'col': 'x'\}\)",
    ):
        validate_cube(ds, fine="fine")


def test_spatial_dims_without_crs():
    ds = xr.Dataset(
        {"fine": (("time", "y", "x"), np.ones((1, 2, 2)))},
        coords={
            "time": np.array(["2020-01-01"], "datetime64[ns]"),
            "y": [15.0, 45.0],
            "x": [15.0, 45.0],
        },
    )
    with pytest.raises(
        GridMismatchError,
        match=r"The cube has spatial dims but no CRS\. Found coords .*odc\.assign_crs\('EPSG:XXXX'\)",
    ):
        validate_cube(ds, fine="fine")


def test_different_crs():
    a = cube()
    other = GeoBox((4, 5), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32634")
    b = from_numpy({"coarse": np.ones((4, 5))}, geobox=other)
    with pytest.raises(
        CRSMismatchError,
        match=r"'fine' and 'coarse' are in different CRSs \(EPSG:32633 vs EPSG:32634\)\. "
        r"Reproject 'coarse' onto the 'fine' grid with `coarse\.odc\.reproject\(fine\.odc\.geobox",
    ):
        require_same_grid(a, b)


def test_different_grids():
    a = cube()
    shifted = GeoBox((4, 5), Affine(30, 0, 500015, 0, -30, 4000000), "EPSG:32633")
    b = from_numpy({"coarse": np.ones((4, 5))}, geobox=shifted)
    with pytest.raises(
        GridMismatchError,
        match=r"'fine' and 'coarse' are on different pixel grids: shape \(4, 5\) vs \(4, 5\), transform "
        r"\(30\.0, 0\.0, 500000\.0.* vs \(30\.0, 0\.0, 500015\.0",
    ):
        require_same_grid(a, b)


def test_unsorted_times():
    ds = cube().isel(time=[1, 0, 2])
    with pytest.raises(
        TimeAxisError,
        match=r"not sorted \(first values \['2020-01-05', '2020-01-01'.*ds\.sortby\('time'\)",
    ):
        validate_cube(ds, fine="fine", coarse="coarse")


def test_duplicate_times():
    ds = cube().isel(time=[0, 1, 1])
    with pytest.raises(
        TimeAxisError, match=r"Duplicate times on the cube: \['2020-01-05 00:00:00'\]\. .*groupby"
    ):
        validate_cube(ds, fine="fine", coarse="coarse")


def test_time_not_datetime():
    ds = cube().assign_coords(time=[1, 2, 3])
    with pytest.raises(
        TimeAxisError, match=r"not datetime64 \(found dtype int64\).*pd\.to_datetime"
    ):
        validate_cube(ds, fine="fine")


def test_integer_data_without_nodata():
    ds = cube()
    ds["fine"] = ds.fine.astype("int16")
    with pytest.raises(
        MissingNodataError,
        match=r"Variable 'fine' holds integers \(int16\) but declares no nodata value.*"
        r"ds\['fine'\]\.attrs\['nodata'\] = 0",
    ):
        validate_cube(ds, fine="fine", coarse="coarse")


def test_unknown_variable_lists_existing():
    with pytest.raises(
        VariableNotFoundError,
        match=r"Fine variable 'red' not found on the dataset\. Variables on the dataset include "
        r"\['coarse', 'fine'\]",
    ):
        validate_cube(cube(), fine="red", coarse="coarse")
    with pytest.raises(KeyError):  # still a KeyError for existing except clauses
        validate_cube(cube(), coarse="nir")


def test_no_date_with_fine_and_coarse():
    ds = cube(observed={"fine": [True, False, False], "coarse": [False, True, True]})
    with pytest.raises(
        NoOverlapError,
        match=r"No date has both a fine and a coarse observation.*Fine \['fine'\] observed on "
        r"\['2020-01-01'\]; coarse \['coarse'\] observed on \['2020-01-05', '2020-01-09'\].*mark_observed",
    ):
        validate_cube(ds, fine="fine", coarse="coarse")


# ---------------------------------------------------------------------------------------------
# builders


def test_from_geotiffs_no_footprint_overlap(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((4, 4), "float32"))
    far = write_tif(
        tmp_path / "far.tif",
        np.ones((4, 4), "float32"),
        transform=from_origin(700000, 3000000, 120, 120),
    )
    with pytest.raises(
        NoOverlapError,
        match=r"The coarse GeoTIFF for 2020-01-01 \('.*far\.tif'\) does not overlap the fine grid\. "
        r"Fine bounds \(500000\.0, 3999880\.0, 500120\.0, 4000000\.0\) in EPSG:32633; coarse bounds "
        r"\(700000\.0, 2999520\.0, 700480\.0, 3000000\.0\) in EPSG:32633",
    ):
        from_geotiffs(fine={"2020-01-01": f}, coarse={"2020-01-01": far})


def test_from_geotiffs_unreadable_path(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((4, 4), "float32"))
    missing = str(tmp_path / "missing.tif")
    with pytest.raises(
        RasterReadError, match=r"Cannot read the coarse GeoTIFF for 2020-01-02: '.*missing\.tif'"
    ):
        from_geotiffs(fine={"2020-01-01": f}, coarse={"2020-01-02": missing})
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(
        OSError, match=r"Cannot read the fine GeoTIFF for 2020-01-01: '.*notes\.tif'"
    ):
        from_geotiffs(fine={"2020-01-01": str(text)}, coarse={"2020-01-01": f})


def test_from_geotiffs_duplicate_dates(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((4, 4), "float32"))
    g = write_tif(tmp_path / "g.tif", np.ones((4, 4), "float32"))
    with pytest.raises(
        TimeAxisError, match=r"Duplicate fine date '2020-01-01': both '.*f\.tif' and '.*g\.tif'"
    ):
        from_geotiffs(
            fine=[("2020-01-01", f), (np.datetime64("2020-01-01"), g)], coarse={"2020-01-01": f}
        )


def test_from_geotiffs_fine_files_on_different_grids(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((4, 4), "float32"))
    g = write_tif(tmp_path / "g.tif", np.ones((4, 5), "float32"))
    h = write_tif(tmp_path / "h.tif", np.ones((4, 4), "float32"), crs="EPSG:32634")
    with pytest.raises(
        GridMismatchError,
        match=r"fine GeoTIFFs are on different pixel grids: .*f\.tif' has shape \(4, 4\)",
    ):
        from_geotiffs(fine={"2020-01-01": f, "2020-01-02": g}, coarse={"2020-01-01": f})
    with pytest.raises(
        CRSMismatchError,
        match=r"fine GeoTIFFs are in different CRSs: .* EPSG:32633 but .* EPSG:32634",
    ):
        from_geotiffs(fine={"2020-01-01": f, "2020-01-02": h}, coarse={"2020-01-01": f})


def test_from_geotiffs_band_count_mismatch(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((2, 4, 4), "float32"))
    c = write_tif(tmp_path / "c.tif", np.ones((4, 4), "float32"))
    with pytest.raises(
        InvalidParameterError, match=r"Fine files have 2 band\(s\) but coarse files have 1"
    ):
        from_geotiffs(fine={"2020-01-01": f}, coarse={"2020-01-01": c})


def test_from_geotiffs_unknown_resampling(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((4, 4), "float32"))
    with pytest.raises(
        InvalidParameterError, match=r"Unknown resampling='linear'\. Choose one of \[.*'bilinear'"
    ):
        from_geotiffs(fine={"2020-01-01": f}, coarse={"2020-01-01": f}, resampling="linear")


def test_from_geotiffs_bad_date(tmp_path):
    f = write_tif(tmp_path / "f.tif", np.ones((4, 4), "float32"))
    with pytest.raises(TimeAxisError, match=r"The fine date 'March 8' is not a date .* YYYYMMDD"):
        from_geotiffs(fine={"March 8": f}, coarse={"2020-01-01": f})


def test_from_numpy_errors():
    with pytest.raises(
        GridMismatchError, match=r"Array 'fine' has shape \(3, 5, 4\) but the geobox is \(4, 5\)"
    ):
        from_numpy({"fine": np.ones((3, 5, 4))}, geobox=GBOX, times=TIMES)
    with pytest.raises(
        TimeAxisError, match=r"Array 'fine' has 3 time steps but times= has 2 dates"
    ):
        from_numpy({"fine": np.ones((3, 4, 5))}, geobox=GBOX, times=TIMES[:2])
    with pytest.raises(TimeAxisError, match=r"times= is not sorted"):
        from_numpy({"fine": np.ones((3, 4, 5))}, geobox=GBOX, times=TIMES[::-1])
    with pytest.raises(TimeAxisError, match=r"Duplicate times \['2020-01-01'\] in times="):
        from_numpy({"fine": np.ones((3, 4, 5))}, geobox=GBOX, times=[TIMES[0]] * 3)
    with pytest.raises(
        MissingNodataError, match=r"Array 'fine' holds integers \(int16\) but no nodata value"
    ):
        from_numpy({"fine": np.ones((3, 4, 5), "int16")}, geobox=GBOX, times=TIMES)
    with pytest.raises(InvalidParameterError, match=r"geobox= must be an odc\.geo GeoBox"):
        from_numpy({"fine": np.ones((4, 5))}, geobox=(4, 5))


# ---------------------------------------------------------------------------------------------
# baseline


def test_baseline_unknown_method():
    with pytest.raises(
        InvalidParameterError,
        match=r"Unknown method='starfm' for baseline\(\)\. Choose one of \['fine-at-pair', 'fine-plus-change'\]",
    ):
        baseline(cube(), fine="fine", coarse="coarse", method="starfm")


def test_baseline_unknown_variable():
    with pytest.raises(
        VariableNotFoundError, match=r"Coarse variable 'modis' not found.*\['coarse', 'fine'\]"
    ):
        baseline(cube(), fine="fine", coarse="modis")


def test_baseline_target_not_on_time_axis():
    with pytest.raises(
        TimeAxisError,
        match=r"The target '2020-01-03' is not on the time axis of the cube\. Times on the cube: "
        r"\['2020-01-01', '2020-01-05', '2020-01-09'\]",
    ):
        baseline(cube(), fine="fine", coarse="coarse", targets="2020-01-03")


def test_baseline_no_pair_on_requested_side():
    with pytest.raises(
        NoOverlapError,
        match=r"found no pair \(date with both fine and coarse observed\) after the target '2020-01-05'\. "
        r"Pair dates: \['2020-01-01'\]",
    ):
        baseline(cube(), fine="fine", coarse="coarse", pairs="after")


def test_baseline_without_observed_coords():
    """Undeclared availability is scanned from the data on first use (Pangeo-built cubes)."""
    full = cube()
    full = full.assign(fine=full.fine.where(full.observed_fine),
                       coarse=full.coarse.where(full.observed_coarse))
    ds = full.drop_vars(["observed_fine", "observed_coarse"])
    got = baseline(ds, fine="fine", coarse="coarse")
    want = baseline(full, fine="fine", coarse="coarse")
    np.testing.assert_array_equal(got.time.values, want.time.values)
    np.testing.assert_array_equal(got.fine.values, want.fine.values)
    # a cube with no fine observation at all: the scan says so, in the usual words
    empty = ds.assign(fine=ds.fine * np.nan)
    with pytest.raises(NoOverlapError, match="found no pair"):
        baseline(empty, fine="fine", coarse="coarse", targets="2020-01-05")


def test_baseline_pair_not_observed():
    with pytest.raises(
        TimeAxisError,
        match=r"The fine variables \['fine'\] are not observed at the pair date\(s\) \['2020-01-09'\]"
        r".*pair dates on this cube: \['2020-01-01'\]",
    ):
        baseline(cube(), fine="fine", coarse="coarse", pairs="2020-01-09")


def test_baseline_coarse_not_observed_at_target():
    ds = cube(observed={"fine": [True, False, False], "coarse": [True, True, False]})
    with pytest.raises(
        TimeAxisError,
        match=r"coarse variables \['coarse'\] are not observed at the target\(s\) \['2020-01-09'\]",
    ):
        baseline(ds, fine="fine", coarse="coarse", targets="2020-01-09")


def test_baseline_unknown_pair_rule_and_list_lengths():
    with pytest.raises(
        InvalidParameterError,
        match=r"Unknown pairs='closest' for baseline\(\)\. Choose one of \['nearest', 'before', 'after'\]",
    ):
        baseline(cube(), fine="fine", coarse="coarse", pairs="closest")
    with pytest.raises(
        InvalidParameterError, match=r"pairs fine and coarse variables by position, but 2 fine"
    ):
        baseline(cube(), fine=["fine", "fine"], coarse="coarse")


def test_baseline_nothing_to_predict():
    ds = cube(observed={"fine": [True, True, True], "coarse": [True, True, True]})
    with pytest.raises(TimeAxisError, match=r"found no date to predict.*Pass `targets=\[\.\.\.\]`"):
        baseline(ds, fine="fine", coarse="coarse")


def test_all_errors_are_xfusion_errors():
    with pytest.raises(XFusionError):
        baseline(cube(), fine="fine", coarse="coarse", method="x")


# ---------------------------------------------------------------------------------------------
# starfm (every bad input of the STARFM issue)


def starfm_cube(**kw):
    a = np.arange(60, dtype="float32").reshape(3, 4, 5) * 10 + 100
    obs = kw.pop("observed", {"fine": [True, False, False], "coarse": [True, True, True]})
    gbox = kw.pop("geobox", GBOX)
    return from_numpy({"fine": a, "coarse": a * 2}, geobox=gbox, times=TIMES, observed=obs)


def test_starfm_no_pair_before_the_target():
    from xfusion import starfm

    ds = starfm_cube(observed={"fine": [False, False, True], "coarse": [True, True, True]})
    with pytest.raises(
        NoOverlapError,
        match=r"starfm\(\) found no pair \(a date with both fine and coarse observed\) before the "
        r"target\(s\) \['2020-01-05'\]; pairs='nearest' predicts each target from the nearest pair "
        r"BEFORE it\. Pair dates: \['2020-01-09'\]\. Use pairs='after'",
    ):
        starfm(ds, fine="fine", coarse="coarse", targets="2020-01-05", max_search_distance=60)


def test_starfm_two_pair_mode_needs_both_sides():
    from xfusion import starfm

    with pytest.raises(
        NoOverlapError,
        match=r"starfm\(\) two-pair mode \(pairs='bracket'\) needs a pair .* before AND after "
        r"every target, but the target\(s\) \['2020-01-05', '2020-01-09'\] lack one side\. Pair "
        r"dates: \['2020-01-01'\]\. Use pairs='nearest'",
    ):
        starfm(starfm_cube(), fine="fine", coarse="coarse", pairs="bracket", max_search_distance=60)


def test_starfm_fine_and_coarse_on_different_grids():
    from xfusion import starfm

    ds = starfm_cube()
    ds["coarse"] = (("time", "yc", "xc"), np.zeros((3, 2, 2), "float32"))
    with pytest.raises(
        MissingDimensionError,
        match=r"Variable 'coarse' lacks the spatial dims \['y', 'x'\] of the cube \(its dims are "
        r"\('time', 'yc', 'xc'\)\)\. .*var\.odc\.reproject\(ds\.odc\.geobox\)",
    ):
        starfm(ds, fine="fine", coarse="coarse", max_search_distance=60)


def test_starfm_window_of_zero_pixels():
    """A window larger than the image is clipped to it (USDA v1.2.1); a window of 0 px is an
    error that says the smallest distance."""
    from xfusion import starfm

    out = starfm(starfm_cube(), fine="fine", coarse="coarse")  # 50 px window, 4 x 5 px image
    assert out["fine"].shape[1:] == (4, 5)
    with pytest.raises(InvalidParameterError, match=r"is 0 pixels\. Use max_search_distance >= 15"):
        starfm(starfm_cube(), fine="fine", coarse="coarse", max_search_distance=10)


def test_starfm_geographic_crs_needs_resolution():
    from xfusion import starfm

    geo = GeoBox((4, 5), Affine(0.001, 0, 140, 0, -0.001, -34), "EPSG:4326")
    with pytest.raises(
        InvalidParameterError,
        match=r"the cube's CRS EPSG:4326 is not in metres \(pixel size 0\.001 x 0\.001 degrees\)\. "
        r"Pass the pixel size in metres as resolution=\.\.\. \(about 111 m for 0\.001 degrees\)",
    ):
        starfm(starfm_cube(geobox=geo), fine="fine", coarse="coarse", max_search_distance=60)


def test_starfm_integer_data_without_nodata():
    from xfusion import starfm

    ds = starfm_cube()
    ds["fine"] = (ds.fine.dims, np.zeros((3, 4, 5), "uint16"))
    with pytest.raises(
        MissingNodataError,
        match=r"Variable 'fine' holds integers \(uint16\) but declares no nodata value.*"
        r"attrs\['nodata'\]",
    ):
        starfm(ds, fine="fine", coarse="coarse", max_search_distance=60)
    ds["fine"].attrs["nodata"] = 0
    with pytest.raises(
        InvalidParameterError,
        match=r"'fine' holds integers \(uint16\), so starfm\(\) writes integer predictions with a "
        r"fill value .* but the fill value -9999 is not an integer within uint16's range "
        r"\[0, 65535\]\. Pass fill=\.\.\.",
    ):
        starfm(ds, fine="fine", coarse="coarse", max_search_distance=60, fill=-9999)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_search_distance": 0}, (
            r"max_search_distance must be a finite number > 0; got 0\. "
            r"It is in metres: USDA uses 750"
        )),
        ({"max_search_distance": -750}, r"max_search_distance must be a finite number > 0; got -750"),
        ({"num_slice": -2}, r"num_slice must be a positive integer; got -2\. The USDA default is 40"),
        ({"num_slice": 2.5}, r"num_slice must be a positive integer; got 2\.5"),
        ({"uncertainty_fine": 0}, (
            r"uncertainty_fine must be a finite number > 0; got 0\. It is in "
            r"the data's unit: 50 for reflectance x1e4 \(USDA\)"
        )),
        ({"uncertainty_coarse": -50}, r"uncertainty_coarse must be a finite number > 0; got -50"),
        ({"distance_offset": -1}, (
            r"distance_offset must be a finite number > 0; got -1\. It is "
            r"the \+1 of t_dis"
        )),
        ({"resolution": 0}, (
            r"resolution must be a finite number > 0; got 0\. It is the pixel "
            r"size in metres"
        )),
        ({"data_range": (5, 1)}, (
            r"data_range must be \(lo, hi\) with lo < hi; got \(5, 1\)\. "
            r"USDA uses \(0, 10000\)"
        )),
        ({"fill": "x"}, (
            r"fill must be a number \(the USDA FILL value, e.g\. -9999\) or None; "
            r"got 'x'"
        )),
        ({"preset": "landsat"}, (
            r"Unknown preset='landsat' for starfm\(\)\. Choose one of "
            r"\['auto', 'usda', 'reflectance', 'lst'\]"
        )),
        ({"mode": "exact"}, (
            r"Unknown mode='exact' for starfm\(\)\. Choose one of "
            r"\['reference', 'float'\]"
        )),
        ({"pairs": "closest", "max_search_distance": 60}, (
            r"Unknown pairs='closest' for starfm\(\)"
            r"\. Choose one of \['nearest', 'before', 'after', 'bracket'\]"
        )),
        ({"device": "tpu"}, r"Unknown device 'tpu'\. Use 'auto'"),
    ],
)
def test_starfm_bad_parameters(kwargs, match):
    from xfusion import starfm

    with pytest.raises(InvalidParameterError, match=match):
        starfm(starfm_cube(), fine="fine", coarse="coarse", **kwargs)


def test_starfm_variables_with_extra_dims():
    from xfusion import starfm

    ds = starfm_cube()[["fine", "coarse"]].expand_dims(band=[1])
    with pytest.raises(
        MissingDimensionError,
        match=r"starfm\(\) predicts \(time, y, x\) variables, but 'fine' also has the dim\(s\) "
        r"\['band'\].*ds\['fine'\]\.to_dataset\('band'\)",
    ):
        starfm(ds, fine="fine", coarse="coarse", max_search_distance=60)


# ---------------------------------------------------------------------------------------------
# gapfill (every bad input of the gap-filling issue)

GF_TIMES = np.datetime64("2021-01-01", "ns") + np.arange(6) * np.timedelta64(8, "D")


def gapfill_cube(**extra):
    a = np.linspace(0.1, 0.6, 6 * 20, dtype="float32").reshape(6, 4, 5)
    a[2:4, 0, 0] = np.nan
    return from_numpy({"ndvi": a, "vh_db": a * -30, "rvi": a, **extra}, geobox=GBOX,
                      times=GF_TIMES)


def test_gapfill_sar_on_another_grid():
    from xfusion import gapfill

    other = GeoBox((4, 5), Affine(30, 0, 500030, 0, -30, 4000000), "EPSG:32633")
    sar = from_numpy({"vh_db": np.zeros((6, 4, 5), "float32")}, geobox=other, times=GF_TIMES)
    with pytest.raises(GridMismatchError, match=r"'optical' and 'sar' are on different pixel "
                       r"grids.*Resample 'sar' onto the 'optical' grid"):
        gapfill(gapfill_cube(), sar=sar)


def test_gapfill_sar_on_other_times():
    from xfusion import gapfill

    sar = from_numpy({"vh_db": np.zeros((6, 4, 5), "float32")}, geobox=GBOX,
                     times=GF_TIMES + np.timedelta64(1, "D"))
    with pytest.raises(TimeAxisError, match=r"The SAR variable 'vh_db' and the optical variable "
                       r"'ndvi' are on different time axes.*dates only in the optical series: "
                       r"\['2021-01-01', .*Composite both onto the same periods, e\.g\. "
                       r"`xfusion\.gapfill_inputs\(s2, s1, days=8\)`"):
        gapfill(gapfill_cube(), sar=sar)


def test_gapfill_time_split_across_chunks():
    from xfusion import gapfill
    from xfusion.errors import ChunkingError

    with pytest.raises(ChunkingError, match=r"gapfill\(\) needs the whole time axis of every "
                       r"pixel in one chunk, but the optical variable 'ndvi' is split into 3 "
                       r"chunks along 'time' \(\(2, 2, 2\)\)\. Rechunk first: "
                       r"`ds = ds\.chunk\(\{'time': -1\}\)`.*or pass rechunk=True"):
        gapfill(gapfill_cube().chunk({"time": 2}), method="linear")


def test_gapfill_series_without_observation_warns_with_count():
    from xfusion import gapfill
    from xfusion.errors import EmptySeriesWarning

    ds = gapfill_cube()
    ds["ndvi"][:, 1, 1:3] = np.nan
    with pytest.warns(EmptySeriesWarning, match=r"gapfill\(\): 2 of 20 pixel series of 'ndvi' in "
                      r"this block have no observation at all; they are left NaN"):
        out = gapfill(ds, method="linear")
    assert np.isnan(out.ndvi.values[:, 1, 1:3]).all()


def test_gapfill_bad_method_variable_and_missing_sar():
    from xfusion import gapfill

    ds = gapfill_cube()
    with pytest.raises(InvalidParameterError, match=r"Unknown method='spline' for gapfill\(\)\. "
                       r"Choose one of \['stori', 'linear', 'savgol', 'harmonic'\]"):
        gapfill(ds, method="spline")
    with pytest.raises(VariableNotFoundError, match=r"Optical variable 'evi' not found on the "
                       r"dataset\. Variables on the dataset include \['ndvi', 'rvi', 'vh_db'\]"):
        gapfill(ds, optical="evi", method="linear")
    with pytest.raises(VariableNotFoundError, match=r"SAR variable 'vv_db' not found on the "
                       r"dataset\. Variables on the dataset include \['ndvi', 'rvi', 'vh_db'\]\. "
                       r"Derive SAR features"):
        gapfill(ds, sar=["vh_db", "vv_db"])
    with pytest.raises(InvalidParameterError, match=r"method='stori' needs SAR features: pass "
                       r"sar=\['vh_db', 'rvi'\]"):
        gapfill(ds, sar=None)
    with pytest.raises(MissingDimensionError, match=r"The optical variable 'ndvi' has extra dims "
                       r"\['band'\]"):
        gapfill(ds.expand_dims(band=[1]), method="linear")


def test_gapfill_stori_weights_and_data_errors(tmp_path):
    pytest.importorskip("torch")
    from xfusion import gapfill
    from xfusion.errors import NotEnoughDataError, WeightsMismatchError, WeightsNotFoundError
    from xfusion.methods.gapfill import StoriConfig, StoriWeights
    from xfusion.training import save_checkpoint

    with pytest.raises(NotEnoughDataError, match=r"STORI needs pixels with at least 3 "
                       r"observations of 'ndvi' to train on; the training sample \(20 pixels.* "
                       r"has 0\..*or use method='linear'"):
        ds = gapfill_cube()
        ds["ndvi"][1:] = np.nan
        gapfill(ds, config=StoriConfig(rounds=5))
    with pytest.raises(NotEnoughDataError, match=r"STORI needs pixels with at least 3 "):
        gapfill(ds, config=StoriConfig(variant="fixed", hidden=2, epochs=1))
    with pytest.raises(WeightsNotFoundError, match=r"Weights 'nope\.safetensors' are neither a "
                       r"file nor a registered name"):
        gapfill(gapfill_cube(), weights="nope.safetensors")
    import torch

    other = tmp_path / "other.safetensors"
    save_checkpoint(other, {"net": {"w": torch.zeros(2)}}, {"arch": "xfusion-v1"})
    with pytest.raises(WeightsMismatchError, match=r"holds architecture 'xfusion-v1', not STORI"):
        StoriWeights.load(other)


# ---------------------------------------------------------------------------------------------
# sttfn and the training utilities (issue 5)


def _sttfn_scene():
    from xfusion.testing import synthetic_scene

    return synthetic_scene((40, 40), times=3, fine_times=[0, 2], cloud_fraction=0.0,
                           coarse_cloud_fraction=0.0, coarse_factor=16).drop_vars("truth")


_STTFN_FAST = {"epochs": 1, "patches": 4, "patch_size": 16,
               "arch_params": {"sr_width": 4, "feat": 4, "width": 4}}


def test_sttfn_bad_inputs(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from xfusion.errors import CheckpointError, NotEnoughDataError, WeightsMismatchError
    from xfusion.methods.sttfn import sttfn

    s = _sttfn_scene()
    one_pair = s.assign_coords(observed_fine=("time", [True, False, False]))
    with pytest.raises(NoOverlapError, match=r"sttfn\(\) needs a pair \(fine and coarse both "
                       r"observed\) before AND after each target, but the target '2021-04-19' "
                       r"has none after it\. Pair dates: \['2021-04-03'\]; dates on the cube: "
                       r"\['2021-04-03', '2021-04-19', '2021-05-05'\]\. Predict only targets"):
        sttfn(one_pair, fine="fine", coarse="coarse", **_STTFN_FAST)
    cloudy = s.copy(deep=True)
    cloudy["fine"][2, :, :] = np.nan
    with pytest.raises(NotEnoughDataError, match=r"sttfn\(\) has too few valid pixels to train "
                       r"its nets: 2021-04-03 -> 2021-05-05: 0 of 1600 pixels observed in all "
                       r"inputs \(L_a 1600, M_a 1600, L_b 0, M_b 1600\)\. It needs 4 patches of "
                       r"16x16 px with at least 50% observed pixels.*Lower min_valid"):
        sttfn(cloudy, fine="fine", coarse="coarse", **_STTFN_FAST)
    path = tmp_path / "w.safetensors"
    sttfn(s, fine="fine", coarse="coarse", save=tmp_path, **_STTFN_FAST)
    (saved,) = tmp_path.glob("sttfn_*.safetensors")
    saved.rename(path)
    kelvin = s.copy()
    kelvin["fine"].attrs["units"] = "degC"
    with pytest.raises(WeightsMismatchError, match=r"expect band 'fine' in units 'K', but the "
                       r"cube's 'fine' is in 'degC'\. Convert the data to 'K'"):
        sttfn(kelvin, fine="fine", coarse="coarse", weights=path)
    with pytest.raises(WeightsMismatchError, match=r"trained on the bands \['fine'\], but the "
                       r"cube's fine variables are \['lst'\]\. Rename the variables"):
        sttfn(s.rename(fine="lst", observed_fine="observed_lst"), fine="lst", coarse="coarse",
              weights=path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"fails its integrity check: its tensors or "
                       r"metadata do not match the recorded content_sha256.*tampered with"):
        sttfn(s, fine="fine", coarse="coarse", weights=path)
    path.write_bytes(bytes(raw[:100]))
    with pytest.raises(CheckpointError, match=r"is corrupt or not a safetensors file"):
        sttfn(s, fine="fine", coarse="coarse", weights=path)


def test_sampler_too_few_valid_patches():
    from xfusion.errors import NotEnoughDataError
    from xfusion.training import RandomPatchSampler

    data = np.full((1, 2, 20, 20), np.nan, "float32")
    s = RandomPatchSampler(data, size=8, length=3, min_valid=0.5, max_tries=10)
    with pytest.raises(NotEnoughDataError, match=r"Found only 0 of 3 patches of 8x8 px with at "
                       r"least 50% observed pixels in every input, after 10 random candidates\. "
                       r"The best observed fraction per input channel was 0: 0\.0%, 1: 0\.0%\. "
                       r"Lower min_valid"):
        _ = s.patches


# ---------------------------------------------------------------------------------------------
# super_resolve / dms / harmonize (issue 6)


def _sr_grids(coarse_x0=500000.0, guide_shape=(36, 44), guide_res=30.0, guide_crs="EPSG:32633"):
    from odc.geo.xr import xr_coords

    cg = GeoBox((9, 11), Affine(120.0, 0, coarse_x0, 0, -120.0, 4000000.0), "EPSG:32633")
    gg = GeoBox(guide_shape, Affine(guide_res, 0, 500000.0, 0, -guide_res, 4000000.0), guide_crs)
    c = xr.DataArray(np.full((9, 11), 300.0, "float32"), dims=("y", "x"), coords=xr_coords(cg),
                     name="lst")
    g = xr.DataArray(np.full(guide_shape, 0.5, "float32"), dims=("y", "x"),
                     coords=xr_coords(gg), name="ndvi")
    return c, g


def test_super_resolve_grid_errors():
    from xfusion.methods.super_resolve import super_resolve

    c, g = _sr_grids()
    with pytest.raises(GridMismatchError, match=r"The grids are not nested by scale=3: coarse "
                       r"pixels 120 x 120, guide pixels 30 x 30 \(ratio 4 x 4\)\. Pass the scale "
                       r"the grids have \(scale=4 here"):
        super_resolve(c, guide=g, scale=3, method="bicubic")
    c, g = _sr_grids(guide_shape=(30, 44))
    with pytest.raises(GridMismatchError, match=r"The guide does not cover the coarse input: "
                       r"the coarse footprint spans guide rows 0\.\.36 and columns 0\.\.44, but "
                       r"the guide has 30 rows and 44 columns\. Crop the coarse input"):
        super_resolve(c, guide=g, method="bicubic")
    c, g = _sr_grids(coarse_x0=500010.0)
    with pytest.raises(GridMismatchError, match=r"coarse pixel edges do not fall on guide pixel "
                       r"edges: the coarse origin is 0\.3333 x 0 guide pixels from the guide "
                       r"origin \(must be whole numbers\)\. Snap the guide"):
        super_resolve(c, guide=g, method="bicubic")
    c, g = _sr_grids(guide_res=50.0, guide_shape=(22, 27))
    with pytest.raises(GridMismatchError, match=r"not nested in the coarse grid: coarse pixels "
                       r"120 x 120, guide pixels 50 x 50 \(ratio 2\.4 x 2\.4\); the ratio must "
                       r"be the same positive integer"):
        super_resolve(c, guide=g, method="bicubic")
    c, g = _sr_grids(guide_crs="EPSG:32632")
    with pytest.raises(CRSMismatchError, match=r"are in different CRSs\. Reproject the guide"):
        super_resolve(c, guide=g, method="bicubic")
    c, g = _sr_grids()
    with pytest.raises(InvalidParameterError, match=r"Unknown method='lanczos' for "
                       r"super_resolve\(\)\. Choose one of \['sif-sr1', 'sif-sr2', 'dms', "
                       r"'bicubic', 'harmonize'\]"):
        super_resolve(c, guide=g, method="lanczos")
    with pytest.raises(InvalidParameterError, match=r"method='sif-sr1' needs weights=: the path "
                       r"of a checkpoint trained with `xfusion\.methods\.super_resolve\."
                       r"train_sif_sr"):
        super_resolve(c, guide=g)
    with pytest.raises(InvalidParameterError, match=r"Unknown params \['windw'\] for "
                       r"method='dms'\. Valid keys: \["):
        super_resolve(c, guide=g, method="dms", params={"windw": 2})


def test_dms_option_errors():
    from xfusion.methods.dms import dms

    c, g = _sr_grids()
    with pytest.raises(InvalidParameterError, match=r"Unknown aggregation='max' for dms\(\)\. "
                       r"Choose one of \['power', 'mean'\]"):
        dms(c, guide=g, aggregation="max")
    with pytest.raises(InvalidParameterError, match=r"homogeneity=0 must be in \(0, 1\]"):
        dms(c, guide=g, homogeneity=0)


def test_super_resolve_weights_errors(tmp_path):
    pytest.importorskip("torch")
    from xfusion.errors import WeightsMismatchError
    from xfusion.methods.harmonize import harmonize
    from xfusion.methods.super_resolve import super_resolve
    from xfusion.models.sifsr import SIFUNet
    from xfusion.training import save_checkpoint

    c, g = _sr_grids()
    path = tmp_path / "sif.safetensors"
    save_checkpoint(path, {"model": SIFUNet(2, 4)}, {
        "arch": "sif-sr", "nbands": 2, "arch_params": {"width": 4}, "method": "sif-sr1",
        "scale": 4, "halo": 72, "inputs": ["lst", "ndvi"],
        "normalization": {"mean": [300.0, 0.5], "std": [5.0, 0.2]}})
    two = xr.Dataset({"ndvi": g, "red": g})
    with pytest.raises(WeightsMismatchError, match=r"take 2 input channels \(the coarse LST plus "
                       r"the guide bands \['ndvi'\]\), but the guide has 2 band\(s\) \['ndvi', "
                       r"'red'\]\. Pass a guide with the bands the weights were trained on"):
        super_resolve(c, guide=two, weights=path)
    with pytest.raises(WeightsMismatchError, match=r"are for architecture 'sif-sr', not the "
                       r"harmonization U-Net \('harmonize-unet'\)"):
        harmonize(xr.Dataset({"red": c}), weights=path)


# --------------------------------------------------------------------------------------------
# STAC: search, presets, load_cube, load_pair, signing (xfusion.stac)


@pytest.fixture(scope="module")
def stac_api(tmp_path_factory):
    """A tiny Landsat/MODIS catalog behind a loopback STAC API (no internet)."""
    from xfusion.testing import synthetic_scene, write_stac_catalog
    from xfusion.testing._server import serve_stac_api

    root = tmp_path_factory.mktemp("stac_errors")
    scene = synthetic_scene((16, 16), times=2, coarse_factor=16, cloud_fraction=0.0, seed=3)
    with serve_stac_api(root) as server:
        cat = write_stac_catalog(scene, root, href_base=server.url)
        yield server, cat, scene


def test_stac_unknown_collection_lists_the_available_ones(stac_api):
    from xfusion.errors import UnknownCollectionError
    from xfusion.stac import search

    server, _, _ = stac_api
    with pytest.raises(UnknownCollectionError, match=r"Unknown collection 'modis-11A1-06' at "
                       r"http://127\.0\.0\.1:\d+/stac\. Did you mean 'modis-11A1-061'\? The API "
                       r"offers 2 collections: \['landsat-c2-l2', 'modis-11A1-061'\]\."):
        search("modis-11A1-06", url=server.stac_url)


def test_stac_empty_search_says_how_to_widen_it(stac_api):
    from xfusion.errors import EmptySearchError
    from xfusion.stac import search

    server, _, _ = stac_api
    with pytest.raises(EmptySearchError, match=r"found no items: collections \['landsat-c2-l2'\], "
                       r"bbox None, time '2000-01-01/2000-02-01', query \{'eo:cloud_cover': "
                       r"\{'lte': 5\.0\}\}\. To find some: widen the time range, enlarge the "
                       r"bbox, raise max_cloud \(now 5\)"):
        search("landsat-c2-l2", url=server.stac_url, time="2000-01-01/2000-02-01", max_cloud=5)


def test_stac_unknown_band_lists_assets_and_preset_bands(stac_api):
    from xfusion.stac import load_cube

    _, cat, _ = stac_api
    with pytest.raises(VariableNotFoundError, match=r"Band 'thermal' is not an asset of any of "
                       r"the 2 items\. The items have the assets \['lwir11', 'qa_pixel'\]; pass "
                       r"some of them in `bands=`\. Preset band names: \[.*'lst'.*\]"):
        load_cube(cat.fine_items, bands=["lst", "thermal"])


def test_stac_aoi_outside_the_items(stac_api):
    from xfusion.stac import load_cube

    _, cat, _ = stac_api
    with pytest.raises(NoOverlapError, match=r"The area of interest \(bbox=\(-70\.0, -30\.0, "
                       r"-69\.9, -29\.9\)\) does not intersect any of the 2 items \(their bboxes "
                       r"include .*\)\. Check the bbox order"):
        load_cube(cat.fine_items, bands="lst", bbox=(-70.0, -30.0, -69.9, -29.9))


def test_stac_mixed_crs_without_a_target_grid(tmp_path):
    from xfusion.stac import load_cube
    from xfusion.testing import synthetic_scene, write_stac_catalog

    a = write_stac_catalog(synthetic_scene((8, 8), times=1, coarse_factor=8), tmp_path / "a")
    b = write_stac_catalog(synthetic_scene((8, 8), times=["2021-04-05T10:00"], coarse_factor=8,
                                           crs="EPSG:32634"), tmp_path / "b")
    with pytest.raises(CRSMismatchError, match=r"The items are in 2 different CRSs \(EPSG:32633: "
                       r"\['LC08_.*'\]; EPSG:32634: \['LC08_.*'\]\) and no target grid was given\. "
                       r"Pass geobox=GeoBox\(\.\.\.\) \(exact grid\), or crs= and resolution="):
        load_cube([*a.fine_items, *b.fine_items], bands="lst")


def test_stac_missing_signing_key(monkeypatch):
    from planetary_computer.settings import Settings

    from xfusion.errors import SigningError
    from xfusion.stac import search

    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    monkeypatch.setattr(Settings.get(), "subscription_key", None)
    with pytest.raises(SigningError, match=r"The Planetary Computer collection 'sentinel-1-rtc' "
                       r"requires an account: searching with sign=True \(signing the asset URLs\) "
                       r"needs a subscription key, and none is configured \(PC_SDK_SUBSCRIPTION_KEY"
                       r" is not set\)\. Set the environment variable PC_SDK_SUBSCRIPTION_KEY="):
        search("sentinel-1-rtc", bbox=(14.0, 46.0, 14.1, 46.1))


def test_stac_presets_masks_and_bbox_errors(stac_api):
    from xfusion.stac import load_cube

    _, cat, _ = stac_api
    with pytest.raises(InvalidParameterError, match=r"Unknown preset 'landsat-c2'\. Did you mean "
                       r"'landsat-c2-l2'\? Registered presets are \["):
        load_cube(cat.fine_items, preset="landsat-c2")
    with pytest.raises(InvalidParameterError, match=r"Unknown mask flag\(s\) \['clouds'\]: the "
                       r"preset defines \['cirrus', 'cloud', 'cloud_medium', 'fill', 'shadow', "
                       r"'snow', 'water'\]"):
        load_cube(cat.fine_items, preset="landsat-c2-l2", mask=["clouds"])
    with pytest.raises(InvalidParameterError, match=r"preset='modis-11A1-061' reads the "
                       r"collections \['modis-11A1-061'\], but the items belong to "
                       r"\['landsat-c2-l2'\]"):
        load_cube(cat.fine_items, preset="modis-11A1-061")
    with pytest.raises(InvalidParameterError, match=r"bbox=\(500000, 5000000, 501000, 5001000\) "
                       r"is not in degrees"):
        load_cube(cat.fine_items, bands="lst", bbox=(500000, 5000000, 501000, 5001000))


def test_stac_unreadable_asset_names_item_and_asset(stac_api):
    from xfusion.errors import AssetReadError
    from xfusion.stac import load_cube

    _, cat, scene = stac_api
    item = cat.fine_items[0].clone()
    item.assets["lwir11"].href = "/nonexistent/LC08_lwir11.tif"
    with pytest.raises(AssetReadError, match=rf"Could not read asset 'lwir11' of item "
                       rf"'{item.id}' \(collection 'landsat-c2-l2'\) from "
                       r"'/nonexistent/LC08_lwir11\.tif': .*The file is not at this URL"):
        load_cube([item], bands="lst", geobox=scene.odc.geobox, retries=0).compute()
