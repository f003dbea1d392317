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
    with pytest.raises(TimeAxisError, match=r"Could not read fine date 'March 8' as a date"):
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
    ds = cube().drop_vars(["observed_fine", "observed_coarse"])
    with pytest.raises(
        TimeAxisError,
        match=r"baseline\(\) cannot tell which dates have observations to predict: the cube has no "
        r"\['observed_fine', 'observed_coarse'\] coordinate\(s\)\. .*xfusion\.cube\.mark_observed\(ds\)"
        r".*explicit `targets=\[\.\.\.\]` and `pairs=\[\.\.\.\]`",
    ):
        baseline(ds, fine="fine", coarse="coarse")
    with pytest.raises(TimeAxisError, match=r"to choose pairs \('nearest'\)"):
        baseline(ds, fine="fine", coarse="coarse", targets="2020-01-05")


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
