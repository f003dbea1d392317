"""The default SIF variant (a learned correction of bicubic + DMS): training, progress,
determinism, early stopping, Ctrl-C, lazy conserving inference."""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xfusion.errors import InvalidParameterError, NotEnoughDataError
from xfusion.methods._sifsr_residual import _conserve_block
from xfusion.methods.super_resolve import super_resolve, train_sif_sr
from xfusion.testing import raise_if_dask_computes, synthetic_scene
from xfusion.training import read_metadata

SMALL = {"epochs": 6, "steps_per_epoch": 3, "verbose": False}


@pytest.fixture(scope="module")
def scene():
    sc, modis = synthetic_scene((128, 128), times=["2021-07-15T10:30"], coarse_factor=4,
                                ndvi=True, coarse_native=True, bias=0.0, noise=0.2,
                                coarse_cloud_fraction=0.0, seed=11)
    return (modis["coarse"].isel(time=0).rename("lst").load(), sc["ndvi"].isel(time=0).load(),
            sc["truth"].isel(time=0).values)


@pytest.fixture(scope="module")
def weights(scene, tmp_path_factory):
    lst, ndvi, _ = scene
    return train_sif_sr(lst, guide=ndvi, out=tmp_path_factory.mktemp("w") / "r.safetensors",
                        device="cpu", seed=1, **SMALL)


def test_checkpoint_records_the_variant_and_the_validation(weights):
    meta = read_metadata(weights)
    assert meta["variant"] == "residual" and meta["halo"] == 0
    assert meta["arch_params"] == {"kind": "residual-mlp", "width": 32, "depth": 4}
    assert meta["nbands"] == 4 and meta["inputs"] == ["lst", "ndvi"]
    tr = meta["training"]
    assert len(tr["history"]) == tr["epochs_run"] <= 6
    assert tr["n_train_cells"] > 0 and tr["n_val_cells"] > 0
    # the kept weights are the best on the held-out strip, never worse than bicubic there
    assert tr["val_rmse"] == pytest.approx(min([tr["bicubic_val_rmse"], tr["dms_val_rmse"]]
                                               + [h["val_rmse"] for h in tr["history"]]))


def test_training_is_deterministic_with_a_seed(scene, tmp_path):
    lst, ndvi, _ = scene
    kw = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 64, "verbose": False}
    a = train_sif_sr(lst, guide=ndvi, out=tmp_path / "a.safetensors", seed=3, **kw)
    b = train_sif_sr(lst, guide=ndvi, out=tmp_path / "b.safetensors", seed=3, **kw)
    c = train_sif_sr(lst, guide=ndvi, out=tmp_path / "c.safetensors", seed=4, **kw)
    ha, hb, hc = (read_metadata(p)["training"]["history"] for p in (a, b, c))
    assert ha == hb and ha != hc
    np.testing.assert_array_equal(super_resolve(lst, guide=ndvi, weights=a).values,
                                  super_resolve(lst, guide=ndvi, weights=b).values)


def test_early_stopping_stops_and_keeps_the_best(scene, tmp_path):
    lst, ndvi, _ = scene
    # a learning rate far too high: validation gets worse, patience 2 stops it
    w = train_sif_sr(lst, guide=ndvi, out=tmp_path / "e.safetensors", epochs=30,
                     steps_per_epoch=2, lr=0.5, patience=2, verbose=False)
    tr = read_metadata(w)["training"]
    assert tr["stopped"] == "early stopping" and tr["epochs_run"] < 30
    assert tr["epochs_run"] - tr["best_epoch"] == 2


def test_beats_bicubic_and_dms_on_a_small_scene(scene, weights):
    lst, ndvi, truth = scene
    err = {m: float(np.sqrt(np.mean((super_resolve(lst, guide=ndvi, method=m).values
                                      - truth) ** 2))) for m in ("bicubic", "dms")}
    out = super_resolve(lst, guide=ndvi, weights=weights).values
    mine = float(np.sqrt(np.mean((out - truth) ** 2)))
    assert mine < min(err.values())


def test_output_conserves_every_coarse_cell(scene, weights):
    lst, ndvi, _ = scene
    out = super_resolve(lst, guide=ndvi, weights=weights).values
    cells = out.reshape(32, 4, 32, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(cells, lst.values, atol=2e-3)


def test_lazy_and_chunk_invariant(scene, weights):
    lst, ndvi, _ = scene
    ref = super_resolve(lst, guide=ndvi, weights=weights)
    with raise_if_dask_computes():
        out = lst.chunk({"y": 7, "x": 13}).fusion.super_resolve(guide=ndvi.chunk(50),
                                                                weights=weights)
    assert dask.is_dask_collection(out.data)
    np.testing.assert_allclose(out.values, ref.values, atol=2e-3)


def test_nan_stays_in_its_footprint(scene, weights):
    lst, ndvi, _ = scene
    holed = lst.copy()
    holed[5, 6] = np.nan
    g = ndvi.copy()
    g[100, 40] = np.nan
    out = super_resolve(holed, guide=g, weights=weights).values
    nan = np.zeros(out.shape, bool)
    nan[20:24, 24:28] = True
    nan[100, 40] = True
    assert np.isnan(out[nan]).all() and np.isfinite(out[~nan]).all()


def test_conserve_block_known_answer():
    y = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    c = np.array([[[0.0, 1.0], [np.nan, 10.0]]], dtype=np.float32)
    out = _conserve_block(y, c, scale=2)
    np.testing.assert_allclose(out[0, :2, :2].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 2:, 2:].mean(), 10.0, atol=1e-6)
    # the shape inside a cell is kept
    np.testing.assert_allclose(out[0, :2, 2:] - out[0, 0, 2], y[0, :2, 2:] - y[0, 0, 2])
    assert np.isnan(out[0, 2:, :2]).all()


def test_default_call_trains_on_the_scene(scene):
    lst, ndvi, _ = scene
    out = super_resolve(lst, guide=ndvi, params={"train": {**SMALL, "epochs": 1}})
    assert out.attrs["super_resolve_method"] == "sif-sr1" and np.isfinite(out.values).all()
    with pytest.raises(InvalidParameterError, match="Unknown variant"):
        super_resolve(lst, guide=ndvi, params={"variant": "newest"})


def test_too_small_scene_is_a_clear_error(scene, tmp_path):
    lst, ndvi, _ = scene
    with pytest.raises(NotEnoughDataError, match="too small"):
        train_sif_sr(lst[:6, :6], guide=ndvi[:24, :24], out=tmp_path / "s.safetensors",
                     verbose=False)


# ------------------------------------------------------------------------------- progress


def test_progress_lines_on_the_logger_when_not_a_tty(scene, tmp_path, caplog, monkeypatch):
    lst, ndvi, _ = scene
    monkeypatch.setenv("XFUSION_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv("XFUSION_PROGRESS", "log")
    with caplog.at_level(logging.INFO, logger="xfusion"):
        train_sif_sr(lst, guide=ndvi, out=tmp_path / "p.safetensors", epochs=3,
                     steps_per_epoch=1)
    lines = [r.getMessage() for r in caplog.records if "sif-sr1 training" in r.getMessage()]
    assert any("1/3 epoch" in ln and "left" in ln and "val RMSE=" in ln and "loss=" in ln
               for ln in lines)
    assert "done" in lines[-1] or "stopped" in lines[-1]


def test_progress_false_is_silent(scene, tmp_path, caplog, capsys, monkeypatch):
    lst, ndvi, _ = scene
    monkeypatch.setenv("XFUSION_PROGRESS_INTERVAL", "0")
    with caplog.at_level(logging.INFO, logger="xfusion"):
        train_sif_sr(lst, guide=ndvi, out=tmp_path / "q.safetensors", epochs=2,
                     steps_per_epoch=1, verbose=False)
    assert not [r for r in caplog.records if "training" in r.getMessage()]
    assert "training" not in capsys.readouterr().err


def test_ctrl_c_stops_cleanly(scene, tmp_path, caplog, monkeypatch):
    lst, ndvi, _ = scene
    import xfusion.models.sifsr as m

    calls = {"n": 0}
    real = m.conserve_cells

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:  # in the second epoch (6 calls before training, 5 per epoch)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(m, "conserve_cells", interrupt)
    monkeypatch.setenv("XFUSION_PROGRESS", "log")
    out = tmp_path / "k.safetensors"
    with caplog.at_level(logging.INFO, logger="xfusion"), pytest.raises(KeyboardInterrupt):
        train_sif_sr(lst, guide=ndvi, out=out, epochs=5, steps_per_epoch=2)
    assert any("interrupted after" in r.getMessage() for r in caplog.records)
    assert not out.exists()


def test_ctrl_c_stops_the_paper_variant_cleanly(scene, tmp_path, caplog, monkeypatch):
    lst, ndvi, _ = scene
    import xfusion.models.sifsr as m

    real = m.sif_loss
    calls = {"n": 0}

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(m, "sif_loss", interrupt)
    monkeypatch.setenv("XFUSION_PROGRESS", "log")
    out = tmp_path / "kp.safetensors"
    with caplog.at_level(logging.INFO, logger="xfusion"), pytest.raises(KeyboardInterrupt):
        train_sif_sr(lst, guide=ndvi, out=out, variant="paper", width=4, epochs=3,
                     steps_per_epoch=2, batch_size=2, patch=32)
    assert any("interrupted after" in r.getMessage() for r in caplog.records)
    assert not out.exists()
