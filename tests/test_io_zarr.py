from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

import xfusion.io
from xfusion.errors import ChunkingError, InvalidParameterError, XFusionError
from xfusion.io.zarr import LAYOUT_ATTR, MARKER_NAME
from xfusion.testing import raise_if_dask_computes

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_zarr_resume_job", HERE / "_zarr_resume_job.py")
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)


def make_cube(
    shape=(11, 13),
    *,
    times=3,
    crs="EPSG:32633",
    dtype="float32",
    chunks=None,
    name="red",
    seed=0,
):
    """A georeferenced (time, <spatial dims>) cube with a real spatial_ref coordinate."""
    if crs == "EPSG:4326":
        affine = Affine(0.01, 0.0, 14.0, 0.0, -0.01, 46.5)
    else:
        affine = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_000_000.0)
    gbox = GeoBox(shape, affine, crs)
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.floating):
        data = rng.random((times, *shape)).astype(dtype)
        data[0, 0, 0] = np.nan
        data[1, 3:5, 2:9] = np.nan
    else:
        data = rng.integers(0, 1000, (times, *shape)).astype(dtype)
    t = np.array([f"2020-01-{d:02d}" for d in range(1, times + 1)], dtype="datetime64[ns]")
    arr = xr.DataArray(
        data,
        dims=("time", *gbox.dimensions),
        coords={"time": t, **xr_coords(gbox, crs_coord_name="spatial_ref")},
        name=name,
    )
    arr.encoding["grid_mapping"] = "spatial_ref"
    ds = arr.to_dataset()
    if chunks is not None:
        ds = ds.chunk(chunks)
    return ds


def zarr_meta(store, var):
    with open(os.path.join(store, var, "zarr.json")) as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------------- to_zarr
def test_roundtrip_float_nan_and_crs(tmp_path, backend):
    import rioxarray  # noqa: F401  (registers .rio)

    chunks = {"time": 1, "y": 5, "x": 4} if backend == "dask" else None
    ds = make_cube(chunks=chunks)
    store = tmp_path / "out.zarr"
    assert xfusion.io.to_zarr(ds, store, progress=False) is None
    back = xfusion.io.open_zarr(store)
    assert "spatial_ref" in back.coords
    assert back.red.dtype == np.float32
    np.testing.assert_array_equal(back.red.values, ds.red.values)  # NaN positions included
    assert int(np.isnan(back.red.values).sum()) == 15
    assert back.red.rio.crs.to_epsg() == 32633
    assert back.odc.geobox == ds.odc.geobox
    xr.testing.assert_identical(back.drop_attrs().compute(), ds.drop_attrs().compute())


def test_open_zarr_without_decode_coords_also_keeps_crs_for_odc(tmp_path):
    ds = make_cube(chunks={"time": 1})
    xfusion.io.to_zarr(ds, tmp_path / "a.zarr", progress=False)
    raw = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)
    assert raw.red.attrs.get("grid_mapping") == "spatial_ref"  # written as CF attribute
    assert raw.odc.geobox == ds.odc.geobox


def test_rioxarray_style_attrs_are_written(tmp_path):
    import rioxarray  # noqa: F401

    ds = make_cube(chunks={"time": 1})
    arr = ds.red.drop_vars("spatial_ref")
    arr.encoding = {}
    arr = arr.rio.write_crs("EPSG:32633").rio.write_nodata(np.nan, encoded=False)
    assert "_FillValue" in arr.attrs  # rioxarray keeps the nodata as an attribute
    xfusion.io.to_zarr(arr, tmp_path / "rio.zarr", progress=False)
    back = xfusion.io.open_zarr(tmp_path / "rio.zarr")
    assert back.red.rio.crs.to_epsg() == 32633
    np.testing.assert_array_equal(back.red.values, ds.red.values)


def test_roundtrip_int_keeps_dtype_and_nodata_fill(tmp_path):
    ds = make_cube(dtype="int16", chunks={"time": 1, "y": 6, "x": 7})
    ds.red.attrs["nodata"] = -1
    store = tmp_path / "int.zarr"
    xfusion.io.to_zarr(ds, store, progress=False)
    meta = zarr_meta(store, "red")
    assert meta["data_type"] == "int16"
    assert meta["fill_value"] == -1
    back = xfusion.io.open_zarr(store)
    assert back.red.dtype == np.int16
    np.testing.assert_array_equal(back.red.values, ds.red.values)
    assert back.red.attrs["nodata"] == -1


def test_geographic_crs_latitude_longitude(tmp_path, backend):
    import rioxarray  # noqa: F401

    chunks = {"time": 1, "latitude": 4, "longitude": 5} if backend == "dask" else None
    ds = make_cube((9, 10), crs="EPSG:4326", chunks=chunks)
    assert ds.red.dims == ("time", "latitude", "longitude")
    store = tmp_path / "geo.zarr"
    xfusion.io.to_zarr(ds, store, progress=False)
    back = xfusion.io.open_zarr(store)
    assert back.red.dims == ("time", "latitude", "longitude")
    assert back.red.rio.crs.to_epsg() == 4326
    assert back.odc.geobox == ds.odc.geobox
    assert back.attrs["spatial:dimensions"] == ["latitude", "longitude"]
    assert back.attrs["proj:code"] == "EPSG:4326"
    np.testing.assert_array_equal(back.red.values, ds.red.values)
    if backend == "dask":
        assert zarr_meta(store, "red")["chunk_grid"]["configuration"]["chunk_shape"] == [1, 4, 5]


def test_geozarr_group_attributes(tmp_path):
    ds = make_cube((11, 13), chunks={"time": 1})
    store = tmp_path / "g.zarr"
    xfusion.io.to_zarr(ds, store, progress=False)
    with open(store / "zarr.json") as fh:
        attrs = json.load(fh)["attributes"]
    assert attrs["proj:code"] == "EPSG:32633"
    assert attrs["proj:wkt2"].startswith("PROJCRS[")
    assert attrs["spatial:dimensions"] == ["y", "x"]
    assert attrs["spatial:shape"] == [11, 13]
    assert attrs["spatial:transform"] == [30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0]
    assert attrs["spatial:bbox"] == [500000.0, 4000000.0 - 11 * 30, 500000.0 + 13 * 30, 4000000.0]
    names = [c["name"] for c in attrs["zarr_conventions"]]
    assert names == ["proj:", "spatial:"]  # the published names (prefix with its colon)
    uuids = [c["uuid"] for c in attrs["zarr_conventions"]]
    assert uuids == ["f17cb550-5864-4468-aeb7-f3180cfb622f", "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"]


def test_chunk_aligned_encoding_and_zstd(tmp_path):
    ds = make_cube((20, 30), chunks={"time": 2, "y": 8, "x": 16}, times=3)
    store = tmp_path / "c.zarr"
    xfusion.io.to_zarr(ds, store, compression_level=5, progress=False)
    meta = zarr_meta(store, "red")
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [2, 8, 16]
    assert meta["fill_value"] == "NaN"
    codecs = {c["name"]: c.get("configuration") for c in meta["codecs"]}
    assert codecs["zstd"]["level"] == 5
    assert meta["attributes"]["grid_mapping"] == "spatial_ref"
    assert meta["dimension_names"] == ["time", "y", "x"]
    # chunk files: 2 (time) x 3 (y) x 2 (x), each owned by exactly one dask chunk
    files = sorted(
        p.relative_to(store / "red" / "c").as_posix()
        for p in (store / "red" / "c").rglob("*")
        if p.is_file()
    )
    assert len(files) == 12


def test_numpy_backed_default_chunks(tmp_path):
    ds = make_cube((11, 13))
    store = tmp_path / "n.zarr"
    xfusion.io.to_zarr(ds, store, progress=False)
    assert zarr_meta(store, "red")["chunk_grid"]["configuration"]["chunk_shape"] == [1, 11, 13]


def test_irregular_chunks_refused_with_fix_or_rechunked(tmp_path):
    ds = make_cube((12, 12)).chunk({"time": 1, "y": (5, 7), "x": 6})
    with pytest.raises(
        ChunkingError, match=r"irregular dask chunks along 'y': \(5, 7\).*ds\.chunk\(\{'y': 7\}\)"
    ):
        xfusion.io.to_zarr(ds, tmp_path / "bad.zarr", progress=False)
    xfusion.io.to_zarr(ds, tmp_path / "ok.zarr", rechunk=True, progress=False)
    assert zarr_meta(tmp_path / "ok.zarr", "red")["chunk_grid"]["configuration"]["chunk_shape"] == [
        1,
        7,
        6,
    ]
    back = xfusion.io.open_zarr(tmp_path / "ok.zarr")
    np.testing.assert_array_equal(back.red.values, ds.red.values)


def test_dataarray_written_under_its_name(tmp_path):
    ds = make_cube(chunks={"time": 1})
    xfusion.io.to_zarr(ds.red.rename("fused"), tmp_path / "da.zarr", progress=False)
    back = xfusion.io.open_zarr(tmp_path / "da.zarr")
    assert list(back.data_vars) == ["fused"]
    np.testing.assert_array_equal(back.fused.values, ds.red.values)
    with pytest.raises(InvalidParameterError, match=r"unnamed DataArray.*rename\('fused'\)"):
        xfusion.io.to_zarr(ds.red.rename(None), tmp_path / "x.zarr")


def test_mode_and_encoding_errors(tmp_path):
    ds = make_cube(chunks={"time": 1})
    store = tmp_path / "m.zarr"
    xfusion.io.to_zarr(ds, store, progress=False)
    with pytest.raises(
        InvalidParameterError, match=r"already exists.*mode=.w-. never overwrites.*mode=.w."
    ):
        xfusion.io.to_zarr(ds, store, progress=False)  # mode="w-"
    xfusion.io.to_zarr(ds + 1, store, mode="w", progress=False)
    np.testing.assert_array_equal(xfusion.io.open_zarr(store).red.values, ds.red.values + 1)
    with pytest.raises(InvalidParameterError, match=r"Unknown mode='x'.*'w-'"):
        xfusion.io.to_zarr(ds, store, mode="x")
    with pytest.raises(InvalidParameterError, match=r"\['nope'\].*include"):
        xfusion.io.to_zarr(ds, tmp_path / "e.zarr", encoding={"nope": {}})


def test_user_encoding_is_merged(tmp_path):
    ds = make_cube(chunks={"time": 1})
    enc = {"red": {"dtype": "int16", "scale_factor": 0.001, "_FillValue": -32768}}
    xfusion.io.to_zarr(ds, tmp_path / "s.zarr", encoding=enc, progress=False)
    meta = zarr_meta(tmp_path / "s.zarr", "red")
    assert meta["data_type"] == "int16"
    assert meta["attributes"]["grid_mapping"] == "spatial_ref"  # still there
    back = xfusion.io.open_zarr(tmp_path / "s.zarr")
    np.testing.assert_allclose(back.red.values, ds.red.values, atol=0.0006)
    assert np.array_equal(np.isnan(back.red.values), np.isnan(ds.red.values))


def test_compute_false_writes_template_only_and_is_lazy(tmp_path):
    ds = make_cube(chunks={"time": 1, "y": 5, "x": 5})
    store = tmp_path / "t.zarr"
    with raise_if_dask_computes():
        pending = xfusion.io.to_zarr(ds, store, compute=False)
    assert dask.is_dask_collection(pending)
    assert not (store / "red" / "c").exists()  # no data chunk yet
    assert np.isnan(xfusion.io.open_zarr(store).red.values).all()
    dask.compute(pending)
    np.testing.assert_array_equal(xfusion.io.open_zarr(store).red.values, ds.red.values)


def test_region_write_drops_scalar_spatial_ref(tmp_path):
    ds = make_cube((12, 12), chunks={"time": 1, "y": 4, "x": 4})
    store = tmp_path / "r.zarr"
    xfusion.io.to_zarr(ds, store, compute=False)
    region = {"y": slice(4, 8), "x": slice(0, 8)}
    xfusion.io.to_zarr(ds.isel(region), store, mode="r+", region=region, progress=False)
    back = xfusion.io.open_zarr(store).red.values
    expect = np.full(ds.red.shape, np.nan, dtype="float32")
    expect[:, 4:8, 0:8] = ds.red.values[:, 4:8, 0:8]
    np.testing.assert_array_equal(back, expect)


def test_append_along_time(tmp_path):
    ds = make_cube(times=3, chunks={"time": 1, "y": 6, "x": 7})
    store = tmp_path / "app.zarr"
    xfusion.io.to_zarr(ds.isel(time=slice(0, 2)), store, progress=False)
    xfusion.io.to_zarr(ds.isel(time=[2]), store, mode="a", append_dim="time", progress=False)
    back = xfusion.io.open_zarr(store)
    np.testing.assert_array_equal(back.time.values, ds.time.values)
    np.testing.assert_array_equal(back.red.values, ds.red.values)


def test_zarr_format_2_roundtrip(tmp_path):
    import rioxarray  # noqa: F401

    ds = make_cube(chunks={"time": 1, "y": 5, "x": 5})
    store = tmp_path / "v2.zarr"
    xfusion.io.to_zarr(ds, store, zarr_format=2, progress=False)
    assert (store / ".zgroup").exists()
    back = xfusion.io.open_zarr(store)
    np.testing.assert_array_equal(back.red.values, ds.red.values)
    assert back.red.rio.crs.to_epsg() == 32633
    report = xfusion.io.write_tiled(ds, tmp_path / "v2t.zarr", zarr_format=2, progress=False)
    assert report.complete
    xr.testing.assert_identical(
        xfusion.io.open_zarr(tmp_path / "v2t.zarr").compute(), back.compute()
    )


def test_progress_bar_when_asked(tmp_path, capsys):
    ds = make_cube(chunks={"time": 1})
    xfusion.io.to_zarr(ds, tmp_path / "p.zarr", progress=True)
    xfusion.io.write_tiled(ds, tmp_path / "pt.zarr", progress=True)
    err = capsys.readouterr().err
    assert "xfusion.to_zarr" in err
    assert "xfusion.write_tiled" in err
    # default when stderr is not a terminal (as under pytest): progress lines, not a bar
    xfusion.io.to_zarr(ds, tmp_path / "q.zarr")
    xfusion.io.write_tiled(ds, tmp_path / "qt.zarr")
    err = capsys.readouterr().err
    assert "xfusion.to_zarr: done" in err and "xfusion.write_tiled: done" in err
    assert "\r" not in err
    # progress=False silences
    xfusion.io.to_zarr(ds, tmp_path / "r.zarr", progress=False)
    xfusion.io.write_tiled(ds, tmp_path / "rt.zarr", progress=False)
    assert capsys.readouterr().err == ""


def test_store_object_and_group(tmp_path):
    zarr = pytest.importorskip("zarr")
    ds = make_cube((24, 24), chunks={"time": 1, "y": 8, "x": 8})
    store = zarr.storage.MemoryStore()
    first = xfusion.io.write_tiled(ds, store, group="level0", progress=False)
    again = xfusion.io.write_tiled(ds, store, group="level0", progress=False)
    assert (first.tiles_written, again.tiles_skipped) == (9, 9)
    assert xfusion.io.tile_status(store, group="level0").all()
    back = xfusion.io.open_zarr(store, group="level0")
    np.testing.assert_array_equal(back.red.values, ds.red.values)
    assert back.odc.geobox == ds.odc.geobox


# ------------------------------------------------------------------------------- write_tiled
def counting_cube(shape=(24, 24), chunks=(4, 6), *, times=2, fail=(), fail_once=(), nan_block=None):
    """A dask cube whose blocks record their (by, bx) when computed; optional failures."""
    log: list[tuple[int, int]] = []
    lock = threading.Lock()
    failed_once: set = set()
    base = make_cube(shape, times=times)

    def block(x, block_info=None):
        loc = block_info[0]["chunk-location"]
        key = (loc[1], loc[2])
        with lock:
            log.append(key)
            if key in fail or (key in fail_once and key not in failed_once):
                failed_once.add(key)
                raise RuntimeError(f"boom in block {key}")
        if key == nan_block:
            return np.full_like(x, np.nan)
        return x

    arr = da.from_array(base.red.values, chunks=(1, *chunks))
    data = arr.map_blocks(block, dtype=arr.dtype, meta=np.array((), dtype=arr.dtype))
    ds = base.copy()
    ds["red"] = (base.red.dims, data)
    ds.red.encoding["grid_mapping"] = "spatial_ref"
    return ds, base, log


def test_write_tiled_equals_single_pass(tmp_path):
    ds, _base, log = counting_cube(nan_block=(1, 2))
    report = xfusion.io.write_tiled(ds, tmp_path / "t.zarr", tile=(8, 12), progress=False)
    assert (report.grid, report.tile_shape) == ((3, 2), (8, 12))
    assert (report.tiles_total, report.tiles_written, report.tiles_skipped) == (6, 6, 0)
    assert report.complete and "6/6 tiles done" in str(report)
    xfusion.io.to_zarr(ds, tmp_path / "single.zarr", progress=False)
    tiled = xfusion.io.open_zarr(tmp_path / "t.zarr")
    single = xfusion.io.open_zarr(tmp_path / "single.zarr")
    assert MARKER_NAME not in tiled.variables and LAYOUT_ATTR not in tiled.attrs
    xr.testing.assert_identical(tiled.compute(), single.compute())
    # every block computed exactly once per write (2 times x 6 x 4 blocks, two writes)
    assert len(log) == 2 * 2 * 24
    # same zarr chunking as the dask chunks
    assert zarr_meta(tmp_path / "t.zarr", "red")["chunk_grid"]["configuration"]["chunk_shape"] == [
        1,
        4,
        6,
    ]


def test_all_nan_tile_is_marked_done_without_chunk_files(tmp_path):
    ds, _, _ = counting_cube(chunks=(12, 12), nan_block=(0, 1))
    store = tmp_path / "nan.zarr"
    xfusion.io.write_tiled(ds, store, progress=False)
    status = xfusion.io.tile_status(store)
    assert status.shape == (2, 2) and status.all()
    # zarr 3 stores no all-NaN chunk: chunk presence would wrongly say "not done"
    assert not (store / "red" / "c" / "0" / "0" / "1").exists()
    assert (store / "red" / "c" / "0" / "0" / "0").exists()
    # one marker object per tile
    assert len([p for p in (store / MARKER_NAME / "c").rglob("*") if p.is_file()]) == 4
    back = xfusion.io.open_zarr(store).red.values
    assert np.isnan(back[:, :12, 12:]).all()


def test_resume_skips_finished_tiles(tmp_path):
    store = tmp_path / "res.zarr"
    # tile (1, 0) fails: tiles before it (row-major, one at a time) are done and marked
    ds, base, _log = counting_cube(fail={(2, 0)})  # block row 2 lies in tile row 1
    with pytest.raises(RuntimeError, match="boom") as info:
        xfusion.io.write_tiled(ds, store, tile=(8, 12), retries=0, max_in_flight=1, progress=False)
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "tile (1, 0)" in note and "2/6 tiles are done" in note and "resume=True" in note
    done = xfusion.io.tile_status(store)
    np.testing.assert_array_equal(done, [[True, True], [False, False], [False, False]])

    ds2, _, log2 = counting_cube()
    report = xfusion.io.write_tiled(ds2, store, tile=(8, 12), progress=False)
    assert (report.tiles_skipped, report.tiles_written) == (2, 4)
    recomputed_tiles = {(by // 2, bx // 2) for by, bx in log2}
    assert recomputed_tiles == {(1, 0), (1, 1), (2, 0), (2, 1)}  # never (0, 0) or (0, 1)
    assert len(log2) == 2 * 4 * 4  # 2 times x 4 tiles x 4 blocks, once each
    np.testing.assert_array_equal(xfusion.io.open_zarr(store).red.values, base.red.values)
    # a third call has nothing to do
    again = xfusion.io.write_tiled(ds2, store, tile=(8, 12), progress=False)
    assert (again.tiles_skipped, again.tiles_written) == (6, 0)


def test_retries_recover_from_transient_failure(tmp_path):
    ds, base, _log = counting_cube(chunks=(12, 12), fail_once={(1, 1)})
    report = xfusion.io.write_tiled(ds, tmp_path / "retry.zarr", retries=1, progress=False)
    assert report.complete
    np.testing.assert_array_equal(
        xfusion.io.open_zarr(tmp_path / "retry.zarr").red.values, base.red.values
    )


def test_layout_mismatch_and_existing_store_errors(tmp_path):
    ds = make_cube((12, 12), chunks={"time": 1, "y": 4, "x": 4})
    store = tmp_path / "lay.zarr"
    xfusion.io.write_tiled(ds, store, tile=4, progress=False)
    with pytest.raises(
        InvalidParameterError,
        match=r"different layout.*tile: store has \[4, 4\], data has \[8, 8\].*mode='w'",
    ):
        xfusion.io.write_tiled(ds, store, tile=8, progress=False)
    other = make_cube((12, 12), times=2, chunks={"time": 1, "y": 4, "x": 4})
    with pytest.raises(
        InvalidParameterError, match=r"different layout.*(shape|coordinate).*mode='w'"
    ):
        xfusion.io.write_tiled(other, store, tile=4, progress=False)
    with pytest.raises(InvalidParameterError, match=r"already exists and resume=False.*mode='w'"):
        xfusion.io.write_tiled(ds, store, tile=4, resume=False, progress=False)
    # mode="w" starts afresh with the new layout
    report = xfusion.io.write_tiled(ds, store, tile=8, mode="w", progress=False)
    assert (report.tiles_total, report.tiles_skipped) == (4, 0)
    # a plain to_zarr store cannot be resumed
    xfusion.io.to_zarr(ds, tmp_path / "plain.zarr", progress=False)
    with pytest.raises(
        InvalidParameterError, match=r"not written tile by tile by xfusion.*mode='w'"
    ):
        xfusion.io.write_tiled(ds, tmp_path / "plain.zarr", progress=False)


def test_tile_size_validation(tmp_path):
    ds = make_cube((12, 12), chunks={"time": 1, "y": 4, "x": 4})
    with pytest.raises(
        ChunkingError, match=r"tile size 6 along 'y' is not a multiple of the chunk size 4.*4 or 8"
    ):
        xfusion.io.write_tiled(ds, tmp_path / "a.zarr", tile=6)
    with pytest.raises(InvalidParameterError, match="positive"):
        xfusion.io.write_tiled(ds, tmp_path / "b.zarr", tile=(0, 4))
    report = xfusion.io.write_tiled(
        ds, tmp_path / "c.zarr", tile={"y": 8, "x": 100}, progress=False
    )
    assert (report.grid, report.tile_shape) == ((2, 1), (8, 12))
    diff = make_cube((12, 12)).chunk({"time": 1, "y": 4, "x": 4})
    diff["blue"] = diff.red.chunk({"y": 6})
    with pytest.raises(ChunkingError, match="chunked differently along 'y'"):
        xfusion.io.write_tiled(diff, tmp_path / "d.zarr")
    with pytest.raises(XFusionError, match="no data variable with both spatial dims"):
        xfusion.io.write_tiled(
            ds.assign(w=ds.red.isel(y=0, x=0, drop=True)).drop_vars("red"), tmp_path / "e.zarr"
        )


def test_write_tiled_numpy_input_and_extra_variables(tmp_path):
    ds = make_cube((12, 12), crs="EPSG:4326")
    ds["weight"] = ("time", da.from_array(np.array([1.0, 2.0, 3.0]), chunks=1))
    report = xfusion.io.write_tiled(ds, tmp_path / "np.zarr", progress=False)
    assert report.tiles_total == 1  # numpy data: one 1024-px chunk per tile
    back = xfusion.io.open_zarr(tmp_path / "np.zarr")
    np.testing.assert_array_equal(back.red.values, ds.red.values)
    np.testing.assert_array_equal(back.weight.values, [1.0, 2.0, 3.0])
    assert back.odc.geobox == ds.odc.geobox


def test_write_tiled_with_distributed_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    base = make_cube((24, 24), times=2)
    ds = base.chunk({"time": 1, "y": 12, "x": 12}) * 2
    with (
        distributed.Client(
            processes=False,
            n_workers=1,
            threads_per_worker=2,
            dashboard_address=None,
            set_as_default=False,
        ) as client,
        client.as_current(),
        distributed.get_task_stream(client) as stream,
    ):
        report = xfusion.io.write_tiled(ds, tmp_path / "dist.zarr", progress=False)
    assert report.complete and report.tiles_written == 4
    assert len(stream.data) >= 8  # the blocks ran on the cluster (2 times x 4 tiles, at least)
    np.testing.assert_array_equal(
        xfusion.io.open_zarr(tmp_path / "dist.zarr").red.values, 2 * base.red.values
    )


# ------------------------------------------------------------- the key test: SIGKILL + resume
def _run_job(store, log, delay):
    return subprocess.Popen(
        [sys.executable, str(HERE / "_zarr_resume_job.py"), str(store), str(log), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _markers_on_disk(store):
    root = Path(store) / MARKER_NAME / "c"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _n_done(store):
    """Tiles marked done, read as a resume would read them (0 while the store is created)."""
    if not _markers_on_disk(store):
        return 0
    try:
        return int(xfusion.io.tile_status(store).sum())
    except Exception:  # the store metadata is being written
        return 0


def _read_log(path):
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            _pid, t, by, bx = map(int, line.split())
            rows.append((t, by, bx))
    return rows


def test_sigkill_mid_write_then_resume_matches_single_pass(tmp_path):
    store = tmp_path / "killed.zarr"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    proc = _run_job(store, log1, delay=0.25)
    try:
        deadline = time.monotonic() + 60
        while _n_done(store) < 4:
            assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "job made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done_at_kill = xfusion.io.tile_status(store)
    n_done = int(done_at_kill.sum())
    assert 4 <= n_done < done_at_kill.size, "the kill must land mid-way"
    done_tiles = {tuple(map(int, ij)) for ij in np.argwhere(done_at_kill)}
    ran_before = {(by, bx) for _t, by, bx in _read_log(log1)}
    assert done_tiles <= ran_before  # sanity: the log records computations

    proc = _run_job(store, log2, delay=0.0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    n_total = done_at_kill.size
    assert f"{n_total - n_done} written, {n_done} skipped" in out

    rerun = _read_log(log2)
    rerun_tiles = {(by, bx) for _t, by, bx in rerun}
    assert not rerun_tiles & done_tiles, "a tile marked done before the kill was recomputed"
    assert rerun_tiles == {(i, j) for i in range(4) for j in range(4)} - done_tiles
    assert len(rerun) == len(set(rerun)) == 2 * (n_total - n_done)  # each block once
    assert xfusion.io.tile_status(store).all()

    # final content == one uninterrupted write, exactly
    single = tmp_path / "single.zarr"
    xfusion.io.to_zarr(job.build(), single, progress=False)
    resumed = xfusion.io.open_zarr(store).compute()
    xr.testing.assert_identical(resumed, xfusion.io.open_zarr(single).compute())
    np.testing.assert_array_equal(resumed.fused.values, job.expected())


# ----------------------------------------------------------------------- empty predictions
@pytest.mark.parametrize("writer", ["to_zarr", "write_tiled"])
@pytest.mark.parametrize("chunks", [None, {"time": 1, "y": 4, "x": 5}])
def test_a_plane_without_valid_pixel_warns_naming_variable_time_and_counts(
    tmp_path, writer, chunks
):
    from xfusion.errors import EmptyPredictionWarning

    ds = make_cube(chunks=chunks)
    ds["red"] = ds["red"].where(ds["time"] != ds["time"][1])  # the second date: all NaN
    with pytest.warns(EmptyPredictionWarning) as rec:
        getattr(xfusion.io, writer)(ds, tmp_path / "e.zarr")
    msgs = [str(w.message) for w in rec if issubclass(w.category, EmptyPredictionWarning)]
    assert len(msgs) == 1
    msg = msgs[0]
    assert "'red'" in msg and "2020-01-02" in msg and "1 of 3 time(s)" in msg
    assert "0 of 143 px" in msg
    assert "2020-01-01" not in msg and "2020-01-03" not in msg
    got = xfusion.io.open_zarr(tmp_path / "e.zarr")
    xr.testing.assert_identical(got["red"].load(), ds["red"].load())


def test_complete_result_does_not_warn(tmp_path):
    import warnings

    from xfusion.errors import EmptyPredictionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyPredictionWarning)
        xfusion.io.to_zarr(make_cube(chunks={"y": 4}), tmp_path / "ok.zarr")
        xfusion.io.write_tiled(make_cube(chunks={"y": 4}), tmp_path / "okt.zarr")
