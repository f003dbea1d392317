"""STORI's residual variant (the default), its booster, the realistic series, and the progress
and Ctrl-C handling of every STORI training loop.

No torch needed except where marked; small scenes and few rounds (seconds).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr
from conftest import requires_torch

from xfusion import gapfill
from xfusion.errors import InvalidParameterError, XFusionError
from xfusion.methods.gapfill import StoriConfig, StoriWeights, fit_stori, job_halo
from xfusion.testing import raise_if_dask_computes, realistic_series
from xfusion.training.boosting import Booster, predict_trees, truncate_trees
from xfusion.training.progress import TrainingInterrupted
from xfusion.training.stori_residual import GAP_CLASSES, box_mean_block, gap_features

SMALL = StoriConfig(rounds=40, train_samples=4000)


@pytest.fixture(scope="module")
def scene():
    return realistic_series((16, 16), seed=3).drop_vars("ndvi_true")


@pytest.fixture(scope="module")
def filled(scene):
    return gapfill(scene, config=SMALL, progress=False)


# ---- the realistic series -----------------------------------------------------------------


def test_realistic_series_layout_and_clouds():
    ds = realistic_series((24, 20), seed=1)
    assert ds.sizes == {"time": 73, "y": 24, "x": 20}
    missing = ds.ndvi.isnull()
    assert 0.28 < float(missing.mean()) < 0.42
    # the winter overcast: 9-11 five-day steps with no observation anywhere, early in the year
    clear = missing.all(("y", "x")).values
    run = max(len(r) for r in "".join("1" if c else "0" for c in clear).split("0"))
    assert 9 <= run <= 14 and clear[:20].sum() >= 9
    assert np.isfinite(ds.ndvi_true.values).all() and ds.vh_db.notnull().mean() > 0.7
    xr.testing.assert_identical(ds, realistic_series((24, 20), seed=1))
    flat = realistic_series((8, 8), seed=2, landscape="flat")
    np.testing.assert_allclose(flat.ndvi_true.std("time").values, 0.0, atol=1e-6)
    with pytest.raises(InvalidParameterError, match=r"landscape='desert' is not one of"):
        realistic_series((8, 8), landscape="desert")


# ---- the booster --------------------------------------------------------------------------


def test_booster_learns_and_predicts_its_own_sums(rng):
    x = rng.random((3000, 3)).astype(np.float32)
    x[:, 0] = rng.integers(0, 20, 3000) / 20  # few distinct values: bin edges between them
    x[::5, 1] = np.nan
    y = np.where(x[:, 0] > 0.5, 1.0, -1.0) + np.where(np.isnan(x[:, 1]), 0.5, 0.0)
    b = Booster(x, y, learning_rate=0.5, max_leaf_nodes=4, min_samples_leaf=10)
    trees = [b.step() for _ in range(40)]
    from xfusion.training.boosting import concat_trees, empty_trees

    ens = empty_trees()
    for t in trees:
        ens = concat_trees(ens, t)
    pred = predict_trees(ens, b.base, x)
    assert np.array_equal(pred, b.pred)  # same sums in the same order
    assert np.abs(pred - y).max() < 1e-2  # a step in x0 and NaN in x1 are learnt
    assert np.array_equal(predict_trees(truncate_trees(ens, 0), b.base, x),
                          np.full(len(y), b.base))
    again = Booster(x, y, learning_rate=0.5, max_leaf_nodes=4, min_samples_leaf=10)
    assert all(np.array_equal(again.step()["value"], t["value"]) for t in trees[:3])


def test_box_mean_known_answers():
    s = np.full((1, 2, 5, 6), 2.0)
    s[0, 0, 2, 3] = np.nan
    out = box_mean_block(s, halo_sides=(0, 0, 0, 0), window=3)
    np.testing.assert_array_equal(out, 2.0)  # NaN ignored, edges truncated
    ramp = np.arange(6.0)[None, None, None, :].repeat(5, axis=2)
    got = box_mean_block(ramp, halo_sides=(1, 1, 1, 1), window=3)
    assert got.shape == (1, 1, 3, 4)
    np.testing.assert_allclose(got[0, 0], ramp[0, 0, 1:4, 1:5])


def test_gap_features_geometry():
    x = np.array([[0.2], [np.nan], [np.nan], [0.5], [np.nan]])
    s = np.zeros((1, 5, 1))
    pos = np.arange(5.0)
    lin, f, cls = gap_features(x, s, pos, pos * 5, 5.0)
    np.testing.assert_allclose(lin[:, 0], [0.2, 0.3, 0.4, 0.5, 0.5])
    assert f.shape == (3, 20)
    np.testing.assert_allclose(f[:2, :4], [[5, 10, 15, 1 / 3], [10, 5, 15, 2 / 3]], rtol=1e-6)
    assert np.isnan(f[2, 1]) and np.isnan(f[2, 2])  # open at the end: no next observation
    assert cls.tolist() == [1, 1, len(GAP_CLASSES)]  # a 2-step gap twice, then one-sided


# ---- gapfill with the default --------------------------------------------------------------


def test_default_is_residual_and_keeps_observed_bits(scene, filled):
    obs = scene.ndvi.notnull().values
    v = filled.ndvi.values
    assert np.array_equal(v[obs].view(np.uint32), scene.ndvi.values[obs].view(np.uint32))
    assert np.isfinite(v).all()
    np.testing.assert_array_equal(filled.ndvi_filled.values, ~obs)
    u = filled.ndvi_uncertainty.values
    assert (u[obs] == 0).all() and (u[~obs] > 0).all()
    assert filled.attrs["gapfill_method"] == "stori"


def test_lazy_one_training_task_numpy_equals_dask_any_chunking(scene, filled):
    lazy = scene.chunk({"time": -1, "y": 5, "x": 7})
    with raise_if_dask_computes():
        out = gapfill(lazy, config=SMALL, progress=False)
    layers = [str(k) for k in out.ndvi.data.dask.layers]
    assert sum(k.startswith("xfusion.gapfill-train-") for k in layers) == 1
    assert any(k.startswith("xfusion.gapfill-sar-") for k in layers)  # SAR window, halo 1
    xr.testing.assert_identical(out.compute(), filled)  # bit for bit
    other = gapfill(scene.chunk({"time": -1, "y": 16, "x": 3}), config=SMALL,
                    progress=False).compute()
    xr.testing.assert_identical(other, filled)


def test_deterministic_with_a_seed(scene, filled):
    xr.testing.assert_identical(gapfill(scene, config=SMALL, progress=False), filled)
    other = gapfill(scene, config=SMALL, seed=1, progress=False)
    assert not np.array_equal(other.ndvi.values, filled.ndvi.values)


def test_beats_linear_on_a_held_out_scene():
    ds = realistic_series((32, 32), seed=123)
    inp = ds.drop_vars("ndvi_true")
    miss = inp.ndvi.isnull().values
    truth = ds.ndvi_true.values[miss]
    mae = {m: float(np.abs(gapfill(inp, method=m, progress=False).ndvi.values[miss] - truth)
                    .mean()) for m in ("linear", "stori")}
    assert mae["stori"] < 0.9 * mae["linear"], mae


def test_early_stopping_and_no_early_stopping(scene):
    w = fit_stori(scene, config=StoriConfig(rounds=400, patience=10, train_samples=3000,
                                            lr=0.5), progress=False)
    tr = w.meta["training"]
    assert tr["stopped"] == "early-stopping" and tr["best_round"] < 400
    assert w.history[-1]["round"] - tr["best_round"] >= 10
    assert len(w.trees()["roots"]) == tr["best_round"]  # the best round's trees are kept
    full = fit_stori(scene, config=StoriConfig(rounds=60, patience=None, train_samples=3000,
                                               lr=0.5), progress=False)
    assert full.meta["training"]["stopped"] == "completed"
    assert full.history[-1]["round"] == 60


def test_progress_lines_on_the_logger_when_not_a_terminal(scene, caplog, monkeypatch):
    monkeypatch.setenv("XFUSION_PROGRESS", "log")  # as when stderr is not a terminal
    monkeypatch.setenv("XFUSION_PROGRESS_INTERVAL", "0")
    caplog.set_level(logging.INFO, logger="xfusion")
    fit_stori(scene, config=SMALL)
    lines = [r.getMessage() for r in caplog.records if r.name == "xfusion.progress"]
    assert lines[0].startswith("stori: started 0/40 round")
    assert any("stori: 20/40 round" in ln and "val=" in ln and "left" in ln for ln in lines), lines
    assert lines[-1].startswith("stori: done 40/40 round") and "(completed)" in lines[-1]


@pytest.mark.parametrize("switch", ["call", "session", "environment"])
def test_one_switch_silences_training_progress(scene, caplog, monkeypatch, switch):
    from xfusion import set_progress

    monkeypatch.setenv("XFUSION_PROGRESS", "0" if switch == "environment" else "log")
    caplog.set_level(logging.INFO, logger="xfusion")
    if switch == "session":
        set_progress(False)
    try:
        fit_stori(scene, config=SMALL, progress=False if switch == "call" else None)
    finally:
        set_progress(None)
    assert not [r for r in caplog.records if r.name == "xfusion.progress"]


def test_ctrl_c_keeps_the_best_model_so_far(scene, caplog):
    seen = []

    def interrupt(rec):
        seen.append(rec["round"])
        if rec["round"] == 20:
            raise KeyboardInterrupt

    w = fit_stori(scene, config=SMALL, progress=False, callback=interrupt)
    tr = w.meta["training"]
    assert seen == [10, 20] and tr["stopped"] == "interrupted" and tr["best_round"] <= 20
    assert len(w.trees()["roots"]) == tr["best_round"]
    assert "training interrupted after 20 rounds; keeping the best model" in caplog.text
    out = gapfill(scene, weights=w)
    assert np.isfinite(out.ndvi.values).all()


def test_training_in_a_worker_stops_when_the_interpreter_shuts_down(scene, monkeypatch):
    # Ctrl-C while dask computes: the main thread raises, the interpreter starts shutting down
    # (thread pools are joined before the main thread is marked stopped) and the training task
    # stops at its next validation stage instead of running to the end
    import threading

    monkeypatch.setattr(threading, "_SHUTTING_DOWN", True, raising=False)
    w = fit_stori(scene, config=SMALL, progress=False)
    assert w.meta["training"]["stopped"] == "interpreter-exit"
    assert [r["round"] for r in w.history] == [10]


def test_ctrl_c_before_any_model_raises_a_clear_error(scene, monkeypatch):
    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Booster, "step", boom)
    with pytest.raises(TrainingInterrupted, match=r"interrupted before its first validation; "
                       r"there is no model to keep") as info:
        gapfill(scene, config=SMALL, progress=False)
    assert isinstance(info.value, XFusionError) and isinstance(info.value, KeyboardInterrupt)


def test_job_halo_follows_the_variant():
    assert job_halo({}, resolution=10.0) == 1
    assert job_halo({"sar_spatial": 5}, resolution=10.0) == 2
    assert job_halo({"variant": "faithful"}, resolution=10.0) == 0


def test_recurrent_only_settings_are_rejected_for_the_default(scene):
    with pytest.raises(InvalidParameterError, match=r"does not use \['epochs'\]: they apply to "
                       r"the recurrent variants.*variant='fixed'"):
        gapfill(scene, epochs=5)


@requires_torch
def test_residual_weights_roundtrip(scene, filled, tmp_path):
    w = fit_stori(scene, config=SMALL, progress=False)
    assert isinstance(w, StoriWeights) and not w.recurrent and w.variant == "residual"
    path = tmp_path / "residual.safetensors"
    w.save(path)
    xr.testing.assert_identical(gapfill(scene, weights=w), filled)
    back = gapfill(scene.chunk({"time": -1, "y": 6, "x": 6}), weights=str(path)).compute()
    xr.testing.assert_identical(back, filled)
    assert StoriWeights.load(path).n_sar == 2


@requires_torch
def test_recurrent_ctrl_c_and_patience_none(scene):
    seen = []

    def interrupt(rec):
        seen.append(rec["epoch"])
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    cfg = StoriConfig(variant="fixed", hidden=4, epochs=5, batch_size=64)
    w = fit_stori(scene, config=cfg, progress=False, callback=interrupt)
    assert seen == [0, 1] and w.meta["training"]["stopped"] == "interrupted"
    full = fit_stori(scene, config=StoriConfig(variant="fixed", hidden=4, epochs=3,
                                               batch_size=64, patience=None), progress=False)
    assert len(full.history) == 3
