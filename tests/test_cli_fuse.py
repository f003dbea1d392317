"""The ``xfusion`` command line: fuse end to end on tiny GeoTIFFs, usage errors, demo, version."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

import xfusion
from xfusion.cli import main
from xfusion.methods import Method, Param, available, get
from xfusion.methods import registry as method_registry

FINE_T = from_origin(500000, 4000000, 30, 30)
COARSE_T = from_origin(499880, 4000120, 120, 120)
A, B, C, D = 0.2, 0.25, 0.3, 0.4  # fine at pair, coarse at pair, coarse at the two targets


def write_tif(path, data, *, transform=FINE_T, nodata=None, descriptions=None):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return str(path)


@pytest.fixture
def tifs(tmp_path):
    return {
        "fine": write_tif(tmp_path / "fine_0308.tif", np.full((8, 6), A, "float32")),
        "c1": write_tif(
            tmp_path / "coarse_0308.tif", np.full((3, 3), B, "float32"), transform=COARSE_T
        ),
        "c2": write_tif(
            tmp_path / "coarse_0317.tif", np.full((3, 3), C, "float32"), transform=COARSE_T
        ),
        "c3": write_tif(
            tmp_path / "coarse_0325.tif", np.full((3, 3), D, "float32"), transform=COARSE_T
        ),
    }


def fuse_args(tifs, out, *extra):
    return [
        "fuse",
        "baseline",
        "--fine",
        f"2020-03-08={tifs['fine']}",
        "--coarse",
        f"2020-03-08={tifs['c1']}",
        "--coarse",
        f"2020-03-17={tifs['c2']}",
        "--out",
        str(out),
        *extra,
    ]


def test_fuse_geotiff_known_answer(tifs, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    assert main(fuse_args(tifs, out, "--target", "2020-03-17", "--chunks", "4")) == 0
    assert "wrote 1 target(s)" in capsys.readouterr().out
    with rasterio.open(out) as src:
        assert src.count == 1
        assert src.descriptions == ("2020-03-17",)
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == tuple(FINE_T)[:6]
        assert np.isnan(src.nodata)
        np.testing.assert_allclose(
            src.read(1), np.float32(A) + (np.float32(C) - np.float32(B)), atol=1e-6
        )


def test_fuse_several_targets_one_band_each(tifs, tmp_path):
    out = tmp_path / "pred.tif"
    args = fuse_args(
        tifs, out, "--coarse", f"2020-03-25={tifs['c3']}", "--param", "method=fine-at-pair"
    )
    assert main(args) == 0  # default targets: every coarse date without fine
    with rasterio.open(out) as src:
        assert src.descriptions == ("2020-03-17", "2020-03-25")
        np.testing.assert_allclose(src.read(), A, atol=1e-6)


def test_fuse_multiband_layout(tmp_path):
    f = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 2.0)]).astype("float32")
    fine = write_tif(tmp_path / "f.tif", f, descriptions=["red", "nir"])
    c1 = write_tif(tmp_path / "c1.tif", f * 10, descriptions=["red", "nir"])
    c2 = write_tif(tmp_path / "c2.tif", f * 11, descriptions=["red", "nir"])
    c3 = write_tif(tmp_path / "c3.tif", f * 12, descriptions=["red", "nir"])
    out = tmp_path / "multi.tif"
    args = [
        "fuse",
        "baseline",
        "--fine",
        f"2020-01-01={fine}",
        "--coarse",
        f"2020-01-01={c1}",
        "--coarse",
        f"2020-01-02={c2}",
        "--coarse",
        f"2020-01-03={c3}",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    with rasterio.open(out) as src:
        assert src.descriptions == (
            "2020-01-02/fine_red",
            "2020-01-02/fine_nir",
            "2020-01-03/fine_red",
            "2020-01-03/fine_nir",
        )
        np.testing.assert_allclose(src.read()[:, 0, 0], [2.0, 4.0, 3.0, 6.0], atol=1e-5)


def test_fuse_zarr(tifs, tmp_path):
    out = tmp_path / "pred.zarr"
    assert main(fuse_args(tifs, out, "--param", "pairs=before")) == 0
    ds = xfusion.io.open_zarr(out)  # hides the resumable writer's markers and counts
    assert list(ds.data_vars) == ["fine"]
    raw = xr.open_zarr(out, consolidated=False)
    assert raw.attrs["xfusion:complete"] is True and "_xfusion_tiles" in raw.data_vars
    assert str(ds.time.values[0])[:10] == "2020-03-17"
    assert str(ds.pair_time.values[0])[:10] == "2020-03-08"
    np.testing.assert_allclose(
        ds.fine.values, np.float32(A) + (np.float32(C) - np.float32(B)), atol=1e-6
    )
    assert ds.odc.geobox.crs.epsg == 32633


def test_out_exists_needs_overwrite(tifs, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    out.write_bytes(b"")
    assert main(fuse_args(tifs, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(fuse_args(tifs, out, "--overwrite")) == 0


@pytest.mark.parametrize(
    ("argv_change", "message"),
    [
        (
            lambda a: [*a[:1], "starfish", *a[2:]],
            r"unknown METHOD 'starfish'; choose one of \['baseline'",
        ),
        (lambda a: [x.replace("2020-03-08=", "2020-03-08:") for x in a], "expected DATE=PATH"),
        (lambda a: [x.replace("2020-03-08=", "March8=") for x in a], "'March8' .* is not a date"),
        (
            lambda a: [*a, "--param", "window=5"],
            r"unknown --param 'window' for method 'baseline'; valid keys: \['method', 'pairs'\]",
        ),
        (
            lambda a: [*a, "--param", "method=best"],
            r"invalid value 'best' for method; choose one of",
        ),
        (lambda a: [*a, "--param", "method"], "expected KEY=VALUE"),
        (lambda a: [*a, "--chunks", "0"], "expected a positive integer"),
        (
            lambda a: [x.replace(".tif", ".png") if x.endswith("pred.tif") else x for x in a],
            "must end in .tif",
        ),
    ],
)
def test_usage_errors_exit_2_without_traceback(tifs, tmp_path, capsys, argv_change, message):
    import re

    argv = argv_change(fuse_args(tifs, tmp_path / "pred.tif"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert "usage: xfusion fuse" in err
    assert not (tmp_path / "pred.tif").exists()


def test_unreadable_path_exits_1_naming_it(tifs, tmp_path, capsys):
    missing = str(tmp_path / "nope.tif")
    argv = fuse_args(tifs, tmp_path / "pred.tif")
    argv[argv.index(f"2020-03-17={tifs['c2']}")] = f"2020-03-17={missing}"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "RasterReadError" in err and repr(missing) in err
    assert "Traceback" not in err


def test_truncated_file_exits_1_naming_it(tifs, tmp_path, capsys):
    """A GeoTIFF cut short (an interrupted download) fails at read time inside dask: the
    error names the file and the block, not GDAL's TIFFFillStrip."""
    rng = np.random.default_rng(0)
    fine = write_tif(tmp_path / "cut_0308.tif", rng.random((256, 240)).astype("float32"))
    size = os.path.getsize(fine)
    with open(fine, "r+b") as f:
        f.truncate(int(size * 0.6))
    argv = fuse_args({**tifs, "fine": fine}, tmp_path / "pred.tif", "--chunks", "64")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "RasterReadError" in err and repr(fine) in err and "truncated" in err
    assert "Traceback" not in err


def test_no_pair_exits_1(tifs, tmp_path, capsys):
    argv = [
        "fuse",
        "baseline",
        "--fine",
        f"2020-03-08={tifs['fine']}",
        "--coarse",
        f"2020-03-17={tifs['c2']}",
        "--out",
        str(tmp_path / "p.tif"),
    ]
    assert main(argv) == 1
    assert "No date has both a fine and a coarse observation" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"xfusion {xfusion.__version__}"


def test_help_lists_methods_and_layout(capsys):
    assert main(["fuse", "--help"]) == 0
    out = capsys.readouterr().out
    assert "baseline:" in out and "method=..." in out and "one band per (target, variable)" in out


def test_registry_adds_a_method_with_one_entry(tifs, tmp_path, monkeypatch):
    seen = {}

    def shift(ds, /, *, fine, coarse, targets=None, offset=0.0):
        from xfusion.methods.baseline import baseline

        seen["offset"] = offset
        return (
            baseline(ds, fine=fine, coarse=coarse, targets=targets, method="fine-at-pair") + offset
        )

    monkeypatch.setattr(sys.modules[__name__], "shift", shift, raising=False)
    entry = Method(
        name="shift", kind="fusion", function=f"{__name__}:shift", help="test", pairs="one",
        params=(Param(name="offset", type="float"),),
    )
    monkeypatch.setitem(method_registry._METHODS, "shift", entry)
    assert "shift" in available("fusion")
    out = tmp_path / "s.tif"
    argv = fuse_args(tifs, out, "--param", "offset=1.5")
    argv[1] = "shift"
    assert main(argv) == 0
    assert seen["offset"] == 1.5
    with rasterio.open(out) as src:
        np.testing.assert_allclose(src.read(1), A + 1.5, atol=1e-6)
    bad = fuse_args(tifs, out, "--overwrite", "--param", "offset=abc")
    bad[1] = "shift"
    assert main(bad) == 2


def test_python_dash_m_subprocess(tifs, tmp_path):
    out = tmp_path / "sub.tif"
    argv = fuse_args(tifs, out, "--target", "2020-03-17")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "xfusion", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    with rasterio.open(out) as src:
        np.testing.assert_allclose(
            src.read(1), np.float32(A) + (np.float32(C) - np.float32(B)), atol=1e-6
        )
    bad = subprocess.run(
        [sys.executable, "-m", "xfusion", "fuse", "nope", "--fine", "x=y"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_cli_module_does_not_import_heavy_modules_at_import():
    code = "import sys, xfusion.cli; print(any(m in sys.modules for m in ('rioxarray', 'torch')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
    assert get("baseline").load().__name__ == "baseline"


def test_unwritable_output_is_one_xfusion_error(tifs, tmp_path, capsys):
    for out in (tmp_path / "missing" / "p.tif", tmp_path / "missing" / "p.zarr"):
        assert main(fuse_args(tifs, out)) == 1
        err = capsys.readouterr().err
        assert "OutputWriteError" in err and str(out) in err and "Traceback" not in err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root may write anywhere)
            assert main(fuse_args(tifs, locked / "p.tif")) == 1
            assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_ctrl_c_is_one_line_and_exit_130(tifs, tmp_path, capsys, monkeypatch):
    from xfusion.cube import build

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "from_geotiffs", interrupted)
    assert main(fuse_args(tifs, tmp_path / "p.tif")) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


def _textured_tifs(tmp_path, n=384):
    """Fine 30 m and coarse 120 m GeoTIFFs with texture, big enough for hundreds of tiles."""
    yy, xx = np.mgrid[0:n, 0:n].astype("float32")
    fine = (0.2 + 0.05 * np.sin(yy / 7.0) * np.cos(xx / 11.0)).astype("float32")
    m = n // 4 + 2
    cy = np.mgrid[0:m, 0:m].astype("float32")[0]
    paths = {"fine": write_tif(tmp_path / "fine.tif", fine)}
    for k, day in enumerate(("0308", "0317", "0325", "0402")):
        coarse = (0.25 + 0.01 * k + 0.02 * np.sin((cy + k) / 5.0)).astype("float32")
        paths[day] = write_tif(tmp_path / f"coarse_{day}.tif", coarse, transform=COARSE_T)
    return paths


def test_ctrl_c_then_same_command_resumes_zarr_bit_identical(tmp_path):
    """A user presses Ctrl-C in the middle of ``xfusion fuse ... --out X.zarr``: exit 130 with
    one line, the store opens with an IncompleteStoreWarning, the same command finishes it and
    the result equals an uninterrupted run bit for bit; --overwrite starts afresh."""
    import signal
    import time
    import warnings

    from xfusion.errors import IncompleteStoreWarning
    from xfusion.io import tile_status as tile_markers

    p = _textured_tifs(tmp_path)
    coarse = [f"2020-{d[:2]}-{d[2:]}={p[d]}" for d in ("0308", "0317", "0325", "0402")]

    def argv(out, *extra):
        args = ["fuse", "baseline", "--fine", f"2020-03-08={p['fine']}", "--chunks", "32",
                "--out", str(out), *extra]
        for c in coarse:
            args += ["--coarse", c]
        return args

    clean = tmp_path / "clean.zarr"
    assert main(argv(clean)) == 0

    out = tmp_path / "pred.zarr"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "xfusion", *argv(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int(tile_markers(out).sum())
        except Exception:  # the store is being created
            done = 0
        if done >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert done >= 3, "the command ended before it could be interrupted"
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    markers = tile_markers(out)
    assert 0 < markers.sum() < markers.size

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part = xfusion.io.open_zarr(out)
    assert any(issubclass(w.category, IncompleteStoreWarning) for w in caught)
    part.close()

    assert main(argv(out)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteStoreWarning)
        got, want = xfusion.io.open_zarr(out), xfusion.io.open_zarr(clean)
        xr.testing.assert_identical(got.load(), want.load())

    before = tile_markers(out).copy()
    assert before.all()
    assert main(argv(out, "--overwrite")) == 0
    xr.testing.assert_identical(xfusion.io.open_zarr(out).load(), want.load())


def test_summary_prints_the_share_predicted_per_target(tifs, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    assert main(fuse_args(tifs, out, "--coarse", f"2020-03-25={tifs['c3']}")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  2020-03-17: fine 100.0 % predicted" in lines
    assert "  2020-03-25: fine 100.0 % predicted" in lines


@pytest.mark.parametrize("suffix", ["tif", "zarr"])
def test_empty_target_exits_1_naming_it_and_the_cause(tifs, tmp_path, capsys, suffix):
    """A coarse image that is all nodata gives an empty prediction: the command says which
    target and why, and exits 1 instead of reporting success."""
    empty = write_tif(tmp_path / "coarse_0325_empty.tif", np.full((3, 3), -9999, "float32"),
                      transform=COARSE_T, nodata=-9999)
    out = tmp_path / f"pred.{suffix}"
    code = main(fuse_args(tifs, out, "--coarse", f"2020-03-25={empty}"))
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    assert "no pixel predicted at 2020-03-25" in captured.err
    assert "coarse image" in captured.err and "no valid pixel" in captured.err
    assert "2020-03-17" not in captured.err  # the good target is not blamed
    assert "  2020-03-17: fine 100.0 % predicted" in captured.out
    assert "  2020-03-25: fine 0.0 % predicted" in captured.out


@pytest.mark.parametrize(("method", "params"), [
    ("estarfm", ["half_window=4"]),
    ("fitfc", ["sf_half_window=4", "n_similar=6", "scale_factor=4"]),
    ("starfm", ["preset=reflectance", "max_search_distance=300", "pairs=bracket"]),
    ("starfm", ["max_search_distance=300", "pairs=bracket"]),  # the default preset: auto
    ("fsdaf", ["half_window=4", "n_similar=6", "scale_factor=4", "block_cells=6",
               "data_range=0,1"]),
])
def test_cli_equals_the_api_on_the_same_files(tmp_path, method, params):
    """`xfusion fuse METHOD --param ...` gives what the Python function gives on the cube
    from_geotiffs builds from the same files (parameters parsed from the registry)."""
    p = _textured_tifs(tmp_path, n=48)
    fine2 = write_tif(tmp_path / "fine_0402.tif",
                      (xr.open_dataarray(p["fine"], engine="rasterio").values[0] * 1.1)
                      .astype("float32"))
    fine = {"2020-03-08": p["fine"], "2020-04-02": fine2}
    coarse = {f"2020-{d[:2]}-{d[2:]}": p[d] for d in ("0308", "0317", "0325", "0402")}
    out = tmp_path / f"{method}.tif"
    argv = ["fuse", method, "--out", str(out), "--target", "2020-03-17", "--chunks", "16"]
    for d, f in fine.items():
        argv += ["--fine", f"{d}={f}"]
    for d, c in coarse.items():
        argv += ["--coarse", f"{d}={c}"]
    for kv in params:
        argv += ["--param", kv]
    assert main(argv) == 0
    ds = xfusion.from_geotiffs(fine=fine, coarse=coarse, chunks=16)
    kw = {k: get(method).param(k).parse(v) for k, v in (kv.split("=") for kv in params)}
    api = getattr(xfusion, method)(ds, fine="fine", coarse="coarse", targets=["2020-03-17"],
                                    **kw)
    with rasterio.open(out) as src:
        got = src.read(1)
    # GeoTIFF outputs are float32 (Fit-FC "wang" predicts float64, as the MATLAB scripts)
    want = api["fine"].isel(time=0).values.astype(got.dtype)
    assert np.isfinite(want).mean() > 0.5
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("method", "params"), [
    ("starfm", {"max_search_distance": 300, "pairs": "bracket"}),
    ("estarfm", {"half_window": 4}),
    ("fitfc", {"sf_half_window": 4, "n_similar": 6, "preset": "imagefusion"}),
    ("fsdaf", {"half_window": 4, "n_similar": 6, "scale_factor": 4, "block_cells": 6}),
])
def test_integer_files_give_integer_results_with_their_fill(tmp_path, method, params):
    """int16 GeoTIFFs (reflectance x1e4, nodata -9999, as USGS and the reference programs
    write them): every classic method writes int16 with that fill, through the API and the CLI."""
    rng = np.random.default_rng(0)
    n = 48
    yy, xx = np.mgrid[0:n, 0:n]
    f = (2000 + 500 * np.sin(yy / 7.0) * np.cos(xx / 11.0) + rng.normal(0, 30, (n, n)))
    f = f.astype("int16")
    f[:3, :3] = -9999
    fine = {"2020-03-08": write_tif(tmp_path / "f1.tif", f, nodata=-9999),
            "2020-04-02": write_tif(tmp_path / "f2.tif", (f * 1.1).astype("int16"),
                                    nodata=-9999)}  # fmt: skip
    m = n // 4 + 2
    cy = np.mgrid[0:m, 0:m][0]
    coarse = {}
    for k, day in enumerate(("0308", "0317", "0402")):
        c = (2500 + 100 * k + 200 * np.sin((cy + k) / 5.0)).astype("int16")
        coarse[f"2020-{day[:2]}-{day[2:]}"] = write_tif(tmp_path / f"c{day}.tif", c,
                                                        transform=COARSE_T, nodata=-9999)
    ds = xfusion.from_geotiffs(fine=fine, coarse=coarse, chunks=16)
    api = getattr(xfusion, method)(ds, fine="fine", coarse="coarse", targets=["2020-03-17"],
                                    **params)
    assert api["fine"].dtype == np.int16 and api["fine"].attrs.get("nodata", -9999) == -9999
    v = api["fine"].values
    assert (v != -9999).mean() > 0.5 and (v[v != -9999] > 1000).all()
    out = tmp_path / f"{method}.tif"
    argv = ["fuse", method, "--out", str(out), "--target", "2020-03-17", "--chunks", "16"]
    for d, p in fine.items():
        argv += ["--fine", f"{d}={p}"]
    for d, p in coarse.items():
        argv += ["--coarse", f"{d}={p}"]
    for k, val in params.items():
        argv += ["--param", f"{k}={val}"]
    assert main(argv) == 0
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "int16" and src.nodata == -9999
        np.testing.assert_array_equal(src.read(1), v[0])
