"""STTFN training behaviour: the default variant and the paper's, determinism with a seed,
early stopping with the untrained guess as fallback, progress lines when stderr is not a
terminal, Ctrl-C, and the spread of the two predictions as an uncertainty indicator."""

from __future__ import annotations

import functools
import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import xfusion
from xfusion.methods.sttfn import VARIANTS, stc_weighting, sttfn
from xfusion.testing import synthetic_scene

TINY = {"sr_width": 4, "feat": 4, "width": 4, "ctx_width": 4}
FAST = {"epochs": 3, "patches": 4, "patch_size": 32, "batch_size": 2, "arch_params": TINY}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scene(size=48, seed=0, **kw):
    opts = {"times": 3, "fine_times": [0, 2], "cloud_fraction": 0.0,
            "coarse_cloud_fraction": 0.0, "coarse_factor": 16, "seed": seed}
    opts.update(kw)
    return synthetic_scene((size, size), **opts).drop_vars("truth")


def _record(out):
    return json.loads(out.attrs["xfusion_sttfn"])


def test_default_variant_is_v2_time_and_untrained_guess_is_smoothed_change():
    s = _scene(40, times=4, fine_times=[0, 3])
    out = sttfn(s, fine="fine", coarse="coarse", epochs=0, arch_params={"ctx_box": 5},
                diagnostics=True)
    rec = _record(out)
    assert rec["variant"] == "xfusion" and rec["arch"] == "xfusion-v2"
    assert rec["combine"] == "time" and rec["arch_params"]["offset"] is False
    v = {k: np.asarray(s[k].values, np.float64) for k in ("fine", "coarse")}

    def smooth(a):
        pad = np.pad(a, 2, constant_values=np.nan)
        return np.nanmean(np.stack([pad[i:i + 40, j:j + 40] for i in range(5)
                                    for j in range(5)]), axis=0)

    for k, q in enumerate((2 / 3, 1 / 3)):  # targets 1/3 and 2/3 of the way
        p1 = v["fine"][0] + smooth(v["coarse"][k + 1] - v["coarse"][0])
        p3 = v["fine"][3] + smooth(v["coarse"][k + 1] - v["coarse"][3])
        np.testing.assert_allclose(out.fine_forward.values[k], p1, atol=2e-3)
        np.testing.assert_allclose(out.fine_backward.values[k], p3, atol=2e-3)
        np.testing.assert_allclose(out.fine.values[k], q * p1 + (1 - q) * p3, atol=2e-3)
        # the spread: the std of the two-point distribution with the combination's weights
        np.testing.assert_allclose(out.fine_std.values[k],
                                   2 * np.sqrt(q * (1 - q)) * np.abs(p1 - p3), atol=4e-3)


def test_paper_variant_reproduces_fine_plus_change_and_stc():
    s = _scene(36)
    out = sttfn(s, fine="fine", coarse="coarse", variant="paper", epochs=0,
                arch_params={"sr_width": 4, "feat": 4, "width": 4}, diagnostics=True)
    rec = _record(out)
    assert rec["variant"] == "paper" and rec["arch"] == "xfusion-v1" and rec["combine"] == "stc"
    v = {k: np.asarray(s[k].values, np.float64) for k in ("fine", "coarse")}
    p1 = v["fine"][0] + v["coarse"][1] - v["coarse"][0]
    p3 = v["fine"][2] + v["coarse"][1] - v["coarse"][2]
    np.testing.assert_allclose(out.fine_forward.values[0], p1, atol=2e-3)
    np.testing.assert_allclose(out.fine_backward.values[0], p3, atol=2e-3)
    # r_i = |P_i - M2| + eps, w_i = (1/r_i) / (1/r_1 + 1/r_3)
    r1, r3 = np.abs(p1 - v["coarse"][1]) + 1e-3, np.abs(p3 - v["coarse"][1]) + 1e-3
    w1 = (1 / r1) / (1 / r1 + 1 / r3)
    np.testing.assert_allclose(out.fine.values[0], w1 * p1 + (1 - w1) * p3, atol=3e-3)
    np.testing.assert_allclose(out.fine.values[0], stc_weighting(p1, p3, v["coarse"][1]),
                               atol=3e-3)
    # the paper's training: reference pairs only (no temporal mix, no target offsets)
    assert VARIANTS["paper"]["train"]["temporal_mix"] == 0.0
    assert VARIANTS["paper"]["train"]["target_offset"] == 0.0


def test_explicit_options_override_the_variant():
    s = _scene(36)
    out = sttfn(s, fine="fine", coarse="coarse", variant="paper", combine="time", epochs=0,
                arch_params={"sr_width": 4, "feat": 4, "width": 4})
    assert _record(out)["combine"] == "time" and _record(out)["arch"] == "xfusion-v1"
    with pytest.raises(xfusion.errors.InvalidParameterError, match=r"variant='fast'"):
        sttfn(s, fine="fine", coarse="coarse", variant="fast")


def test_training_is_deterministic_with_a_seed():
    s = _scene()
    a = sttfn(s, fine="fine", coarse="coarse", seed=5, patience=None, progress=False, **FAST)
    b = sttfn(s, fine="fine", coarse="coarse", seed=5, patience=None, progress=False, **FAST)
    np.testing.assert_array_equal(a.fine.values, b.fine.values)
    ma, mb = (_record(o)["triplets"][0]["metrics"]["forward"] for o in (a, b))
    assert ma["best_loss"] == mb["best_loss"] and ma["epochs_run"] == 3


def test_early_stopping_keeps_the_untrained_guess_when_training_does_not_help():
    """A learning rate far too large: the held-out strip never improves on the initial
    weights, training stops after `patience` epochs and the untrained guess is returned."""
    s = _scene(96)
    kw = {"fine": "fine", "coarse": "coarse", "progress": False}
    out = sttfn(s, lr=50.0, patience=2, **{**FAST, "epochs": 10, "patch_size": 24}, **kw)
    for m in _record(out)["triplets"][0]["metrics"].values():
        assert m["monitored"] == "val_loss"
        assert m["stopped"] == "early-stopping" and m["epochs_run"] == 2
        assert m["best_epoch"] == -1  # the initial weights were kept
    guess = sttfn(s, epochs=0, arch_params=TINY, **kw)
    np.testing.assert_allclose(out.fine.values, guess.fine.values, atol=1e-4)


def test_progress_lines_on_the_xfusion_logger_when_not_a_terminal(caplog, monkeypatch):
    monkeypatch.setenv("XFUSION_PROGRESS_INTERVAL", "0")  # a line per epoch
    monkeypatch.setattr("xfusion._progress.interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="xfusion"):
        sttfn(_scene(96), fine="fine", coarse="coarse", progress=True, patience=None,
              **{**FAST, "patch_size": 24})
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("xfusion")]
    fwd = [ln for ln in lines if ln.startswith("sttfn forward")]
    assert any("started" in ln for ln in fwd) and any("stopped" in ln or "done" in ln
                                                      for ln in fwd)
    mid = [ln for ln in fwd if "1/3 epoch" in ln]
    assert mid and "left" in mid[0] and "train=" in mid[0] and "val=" in mid[0], fwd
    assert "val=nan" not in mid[0]  # the held-out strip is scored every epoch
    assert any(ln.startswith("sttfn backward") for ln in lines)
    assert any(ln.startswith("sttfn forward: completed after 3 epoch(s)") and "kept" in ln
               for ln in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xfusion"):
        sttfn(_scene(), fine="fine", coarse="coarse", progress=False, **FAST)
    assert not [r for r in caplog.records if r.getMessage().startswith("sttfn")]


def _interrupt_after(n_epochs, monkeypatch):
    from xfusion.training import loop

    real = loop.fit

    def hook(record):
        if record["epoch"] + 1 >= n_epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "fit", functools.partial(real, callback=hook))


def test_ctrl_c_stops_training_cleanly(caplog, monkeypatch):
    monkeypatch.setattr("xfusion._progress.interactive", lambda: False)
    _interrupt_after(1, monkeypatch)
    with caplog.at_level(logging.INFO, logger="xfusion"), pytest.raises(KeyboardInterrupt):
        sttfn(_scene(), fine="fine", coarse="coarse", progress=True, patience=None, **FAST)
    lines = [r.getMessage() for r in caplog.records]
    assert "sttfn forward: interrupted after 1 of 3 epoch(s)" in lines
    assert any(ln.startswith("sttfn forward: stopped 1/3 epoch") for ln in lines)
    assert not any(ln.startswith("sttfn backward") for ln in lines)  # nothing runs on


def test_ctrl_c_in_the_cli_exits_130(tmp_path, monkeypatch, capsys):
    import rioxarray  # noqa: F401

    from xfusion.cli import main

    s = _scene(32)
    days = [str(t)[:10] for t in s.time.values]
    args = ["fuse", "sttfn"]
    for i in range(3):
        for role in ("fine", "coarse"):
            if role == "fine" and i == 1:
                continue
            p = tmp_path / f"{role}_{i}.tif"
            s[role][i].rio.write_crs(s.odc.crs).rio.to_raster(p)
            args += [f"--{role}", f"{days[i]}={p}"]
    _interrupt_after(1, monkeypatch)
    rc = main([*args, "--target", days[1], "--out", str(tmp_path / "p.tif"),
               "--param", "epochs=3", "--param", "patches=4", "--param", "patch_size=16",
               "--param", 'arch_params={"sr_width": 4, "feat": 4, "width": 4}'])
    assert rc == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and not (tmp_path / "p.tif").exists()


def test_spread_tracks_the_error_on_a_small_case():
    """Calibration of `<var>_std` on a small synthetic LST scene with known truth (untrained
    default nets, so no training noise): it ranks the errors (Spearman rho) and about 95 % of
    them fall within ±2 std."""
    s = synthetic_scene((96, 96), seed=0, times=5, fine_times=[0, 4], cloud_fraction=0.0,
                        coarse_cloud_fraction=0.0, coarse_factor=16)
    out = sttfn(s.drop_vars("truth"), fine="fine", coarse="coarse", epochs=0, diagnostics=True,
                arch_params=TINY)
    err = np.abs(out.fine.values - s.truth.sel(time=out.time).values).ravel()
    std = out.fine_std.values.ravel()
    assert np.isfinite(std).all() and (std >= 0).all()
    rank = lambda a: np.argsort(np.argsort(a)).astype(float)
    rho = np.corrcoef(rank(std), rank(err))[0, 1]
    assert rho > 0.3
    assert 0.85 < np.mean(err <= 2 * std) < 0.99


def test_default_trains_on_a_small_cloudy_scene_with_a_warning():
    """A scene as small as a patch whose fine image is half clouded: the default relaxes the
    observed share its patches need (and says so); an explicit min_valid is kept."""
    from xfusion.errors import NotEnoughDataError, XFusionWarning

    s = _scene(40)
    fine = s["fine"].values.copy()
    fine[2, :, :21] = np.nan  # 47.5 % observed at the second pair
    s["fine"] = (s["fine"].dims, fine, s["fine"].attrs)
    with pytest.warns(XFusionWarning, match="too few clear patches.*trained on patches with at least 20% observed"):
        out = sttfn(s, fine="fine", coarse="coarse", epochs=1, progress=False)
    assert np.isfinite(out["fine"].values).mean() > 0.9
    with pytest.raises(NotEnoughDataError, match="min_valid"):
        sttfn(s, fine="fine", coarse="coarse", epochs=1, min_valid=0.5, progress=False)
