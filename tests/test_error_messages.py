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


def test_starfm_window_larger_than_the_image():
    from xfusion import starfm

    with pytest.raises(
        InvalidParameterError,
        match=r"starfm\(\) window of 50 px \(int\(2 \* max_search_distance / resolution\) = "
        r"int\(2 \* 750 / 30\)\) is larger than the image \(4 x 5 px\)\. Use "
        r"max_search_distance <= 60 m",
    ):
        starfm(starfm_cube(), fine="fine", coarse="coarse")
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
            r"\['usda', 'reflectance', 'lst'\]"
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


# --------------------------------------------------------------------------------------------
# STAC: search, presets, load_cube, load_pair, signing (xfusion.stac, xfusion.cube.stac)


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
    from xfusion.cube.stac import load_cube

    _, cat, _ = stac_api
    with pytest.raises(VariableNotFoundError, match=r"Band 'thermal' is not an asset of any of "
                       r"the 2 items\. The items have the assets \['lwir11', 'qa_pixel'\]; pass "
                       r"some of them in `bands=`\. Preset band names: \[.*'lst'.*\]"):
        load_cube(cat.fine_items, bands=["lst", "thermal"])


def test_stac_aoi_outside_the_items(stac_api):
    from xfusion.cube.stac import load_cube

    _, cat, _ = stac_api
    with pytest.raises(NoOverlapError, match=r"The area of interest \(bbox=\(-70\.0, -30\.0, "
                       r"-69\.9, -29\.9\)\) does not intersect any of the 2 items \(their bboxes "
                       r"include .*\)\. Check the bbox order"):
        load_cube(cat.fine_items, bands="lst", bbox=(-70.0, -30.0, -69.9, -29.9))


def test_stac_mixed_crs_without_a_target_grid(tmp_path):
    from xfusion.cube.stac import load_cube
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
    from xfusion.cube.stac import load_cube

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
    from xfusion.cube.stac import load_cube
    from xfusion.errors import AssetReadError

    _, cat, scene = stac_api
    item = cat.fine_items[0].clone()
    item.assets["lwir11"].href = "/nonexistent/LC08_lwir11.tif"
    with pytest.raises(AssetReadError, match=rf"Could not read asset 'lwir11' of item "
                       rf"'{item.id}' \(collection 'landsat-c2-l2'\) from "
                       r"'/nonexistent/LC08_lwir11\.tif': .*The file is not at this URL"):
        load_cube([item], bands="lst", geobox=scene.odc.geobox, retries=0).compute()
