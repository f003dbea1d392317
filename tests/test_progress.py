"""Progress where users watch: tqdm.auto bars in terminals and Jupyter, progress lines when
stderr is not a terminal (batch jobs, logs), one switch to silence everything."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from xfusion import _progress
from xfusion._progress import Progress, enabled, set_progress

WRITE = textwrap.dedent("""
    import numpy as np, xarray as xr, xfusion
    from xfusion.cube import from_numpy
    from odc.geo.geobox import GeoBox
    from affine import Affine
    g = GeoBox((64, 64), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
    ds = from_numpy({{"v": np.ones((2, 64, 64), "float32")}}, geobox=g,
                    times=["2020-01-01", "2020-01-02"]).chunk({{"y": 16, "x": 16}})
    xfusion.io.write_tiled(ds, {store!r})
""")


def _run(code, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XFUSION_PROGRESS")}
    env.update({"PYTHONWARNINGS": "ignore", "XFUSION_PROGRESS_INTERVAL": "0", **env_extra})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=True, cwd=tmp_path)  # not a TTY


def test_non_tty_run_writes_progress_lines(tmp_path):
    res = _run(WRITE.format(store=str(tmp_path / "a.zarr")), {}, tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("xfusion.write_tiled")]
    assert lines[0].startswith("xfusion.write_tiled: started 0/16 tile")
    assert lines[-1].startswith("xfusion.write_tiled: done 16/16 tile (100 %)")
    assert len(lines) >= 4  # and lines in between (interval 0 s here)
    assert "\r" not in res.stderr  # no bar redraws in a log


@pytest.mark.parametrize("off", ["0", "off", "false"])
def test_one_switch_silences(tmp_path, off):
    res = _run(WRITE.format(store=str(tmp_path / "b.zarr")), {"XFUSION_PROGRESS": off},
               tmp_path)
    assert "xfusion.write_tiled" not in res.stderr


def test_bar_mode_draws_a_tqdm_bar(tmp_path):
    res = _run(WRITE.format(store=str(tmp_path / "c.zarr")), {"XFUSION_PROGRESS": "bar"},
               tmp_path)
    assert "xfusion.write_tiled: 100%" in res.stderr and "16/16" in res.stderr


def test_switch_precedence(monkeypatch):
    import dask

    monkeypatch.delenv("XFUSION_PROGRESS", raising=False)
    assert enabled() and not enabled(False)
    monkeypatch.setenv("XFUSION_PROGRESS", "0")
    assert not enabled() and enabled(True)
    with dask.config.set({"xfusion.progress": True}):
        assert enabled()
    set_progress(True)
    try:
        assert enabled()
        assert not enabled(False)  # a call's own switch wins
    finally:
        set_progress(None)
    assert not enabled()


def test_lines_go_to_the_logger_when_logging_shows_info(caplog, monkeypatch):
    monkeypatch.setenv("XFUSION_PROGRESS", "log")
    monkeypatch.setenv("XFUSION_PROGRESS_INTERVAL", "0")
    with (caplog.at_level(logging.INFO, logger="xfusion.progress"),
          Progress(3, desc="unit test", unit="step") as bar):
        for _ in range(3):
            bar.update(1)
    msgs = [r.getMessage() for r in caplog.records if r.name == "xfusion.progress"]
    assert msgs[0] == "unit test: started 0/3 step (0 %) in 0 s"
    assert msgs[-1].startswith("unit test: done 3/3 step (100 %)")


def test_training_reports_epochs_and_ctrl_c_keeps_a_resumable_state(tmp_path, monkeypatch,
                                                                      capsys):
    torch = pytest.importorskip("torch")
    from xfusion.training import fit

    monkeypatch.setenv("XFUSION_PROGRESS", "log")
    monkeypatch.setenv("XFUSION_PROGRESS_INTERVAL", "0")
    x = torch.linspace(-1, 1, 64).reshape(-1, 1)
    data = torch.utils.data.TensorDataset(x, 3 * x)
    model = torch.nn.Linear(1, 1)

    def stop(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(model, data, epochs=10, batch_size=16, lr=0.05, checkpoint=ckpt, callback=stop,
            description="linear")
    err = capsys.readouterr().err
    assert "linear: started 0/10 epoch" in err and "3/10 epoch (30 %)" in err and "train=" in err
    assert "linear: interrupted after 3 of 10 epoch(s); resume=" in err
    res = fit(torch.nn.Linear(1, 1), data, epochs=10, batch_size=16, lr=0.05, resume=ckpt,
              description="linear")
    assert res.epochs_run == 10 and len(res.history) == 10


def test_cli_quiet_and_non_tty_lines(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_cli_fuse import _textured_tifs

    p = _textured_tifs(tmp_path, n=64)
    argv = ["fuse", "baseline", "--fine", f"2020-03-08={p['fine']}", "--coarse",
            f"2020-03-17={p['0317']}", "--coarse", f"2020-03-08={p['0308']}", "--chunks", "32"]
    code = "import sys; from xfusion.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XFUSION_PROGRESS")}
    env.update(PYTHONWARNINGS="ignore", XFUSION_PROGRESS_INTERVAL="0")
    loud = subprocess.run([sys.executable, "-c", code, *argv, "--out", str(tmp_path / "a.zarr")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert loud.returncode == 0, loud.stderr
    assert "xfusion.write_tiled: done 4/4 tile (100 %)" in loud.stderr
    quiet = subprocess.run([sys.executable, "-c", code, *argv, "--out",
                            str(tmp_path / "b.zarr"), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300, check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert "xfusion.write_tiled" not in quiet.stderr


def test_interactive_detects_a_jupyter_kernel(monkeypatch):
    class Shell:
        kernel = object()

    monkeypatch.delenv("XFUSION_PROGRESS", raising=False)
    ipython = pytest.importorskip("IPython")
    monkeypatch.setitem(sys.modules, "ipykernel", type(sys)("ipykernel"))
    monkeypatch.setattr(ipython, "get_ipython", lambda: Shell())
    assert _progress.interactive()
