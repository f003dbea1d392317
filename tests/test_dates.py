"""One date parser everywhere: ISO, YYYYMMDD, day of year; ambiguous forms and far years refused."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

import xfusion
from xfusion._dates import parse_date
from xfusion.cli import main
from xfusion.errors import JobError, TimeAxisError
from xfusion.testing import synthetic_scene

FEB5 = np.datetime64("2016-02-05T00:00", "ns")


@pytest.mark.parametrize(
    "value",
    ["2016-02-05", "20160205", "2016-036", "2016036", "A2016036", " 2016-02-05 ", 20160205,
     2016036, dt.date(2016, 2, 5), dt.datetime(2016, 2, 5), np.datetime64("2016-02-05"),
     pd.Timestamp("2016-02-05"), dt.datetime(2016, 2, 5, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))],
)
def test_every_form_reads_the_same_day(value):
    assert parse_date(value) == FEB5


def test_times_and_offsets():
    assert parse_date("2016-02-05T10:30:00Z") == np.datetime64("2016-02-05T10:30", "ns")
    assert parse_date("2016-02-05T10:30+02:00") == np.datetime64("2016-02-05T08:30", "ns")
    assert parse_date("2016-12-31") == np.datetime64("2016-12-31", "ns")
    assert parse_date("2016-366") == np.datetime64("2016-12-31", "ns")  # leap year


@pytest.mark.parametrize(
    ("value", "match"),
    [("02/05/2016", "unambiguously"), ("05.02.2016", "unambiguously"), ("2016-02", "month"),
     ("2016", "year"), ("16-02-05", "unambiguously"), ("20161305", "calendar date"),
     ("2015-366", "day of year 366"), ("1961-08-11", "satellite era"),
     ("21160205", "satellite era"), ("yesterday", "unambiguously"), (True, "boolean"),
     (np.datetime64("NaT"), "NaT"), (3.5, "float")],
)
def test_ambiguous_or_wrong_dates_are_refused(value, match):
    with pytest.raises(TimeAxisError, match=match):
        parse_date(value, what="target")


def test_api_targets_and_pairs_take_compact_dates():
    scene = synthetic_scene((32, 32), times=["2016-02-05", "2016-02-13", "2016-02-21"],
                            fine_times=[0, 2], seed=0)
    a = xfusion.baseline(scene, fine="fine", coarse="coarse", targets="2016-02-13",
                         pairs="2016-02-05")
    b = xfusion.baseline(scene, fine="fine", coarse="coarse", targets="20160213",
                         pairs="2016036")
    np.testing.assert_array_equal(a.fine.values, b.fine.values)
    assert str(b.time.values[0])[:10] == "2016-02-13"
    with pytest.raises(TimeAxisError, match="unambiguously"):
        xfusion.baseline(scene, fine="fine", coarse="coarse", targets="13/02/2016")


def _tif(path, value):
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       crs="EPSG:32633", transform=Affine(30, 0, 500000, 0, -30, 5000000)) as f:
        f.write(np.full((8, 8), value, "float32"), 1)
    return str(path)


def test_cli_compact_dates_label_the_output(tmp_path, capsys):
    fine = _tif(tmp_path / "LC08_20160205.tif", 300.0)
    c1 = _tif(tmp_path / "m1.tif", 290.0)
    c2 = _tif(tmp_path / "m2.tif", 295.0)
    out = tmp_path / "p.tif"
    argv = ["fuse", "baseline", "--fine", f"20160205={fine}", "--coarse", f"2016036={c1}",
            "--coarse", f"2016-02-13={c2}", "--target", "20160213", "--out", str(out)]
    assert main(argv) == 0
    with rasterio.open(out) as src:
        assert src.descriptions == ("2016-02-13",)
        np.testing.assert_allclose(src.read(1), 305.0)
    bad = ["fuse", "baseline", "--fine", f"05/02/2016={fine}", "--coarse", f"2016-02-05={c1}",
           "--out", str(tmp_path / "q.tif")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "05/02/2016" in err and "YYYYMMDD" in err and "Traceback" not in err


def test_job_dates(tmp_path):
    job = xfusion.Job(method="baseline", store=str(tmp_path / "x.zarr"),
                      time=("20160201", 2016060), targets=["2016-036", "20160213"],
                      bbox=(0, 0, 1, 1))
    assert job.time == ("2016-02-01", "2016-02-29")
    assert job.targets == ("2016-02-05", "2016-02-13")
    with pytest.raises(JobError, match=r"'time'.*satellite era"):
        xfusion.Job(method="baseline", store="x.zarr", time=("1961-08-11", "2016-01-01"),
                    bbox=(0, 0, 1, 1))
