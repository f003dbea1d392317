"""STORI: the recurrent cell's wiring (faithful vs fixed), loss, training, lazy inference, weights.

CPU only, tiny nets (hidden 4-8, 1-6 epochs) on 12x12 synthetic scenes.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import requires_torch

from xfusion.testing import raise_if_dask_computes, synthetic_series

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from xfusion import gapfill, time_gaps
from xfusion.errors import (
    NotEnoughDataError,
    WeightsMismatchError,
)
from xfusion.methods.gapfill import StoriConfig, StoriWeights, fit_stori
from xfusion.models.stori import build_stori, stori_loss, time_gaps_torch

TINY = StoriConfig(variant="fixed", hidden=4, epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def scene():
    return synthetic_series((12, 12), seed=0)


@pytest.fixture(scope="module")
def filled(scene):
    return gapfill(scene, config=TINY)


@pytest.mark.parametrize("variant", ["fixed", "faithful"])
def test_parameter_count_matches_the_public_code(variant):
    cfg = StoriConfig(variant=variant)
    net = build_stori(1, n_sar=2, **cfg.arch)
    per_direction = sum(p.numel() for p in net.forward_net.parameters())
    assert per_direction == 77_089  # 2 x LSTMCell(2->96) + Linear(1->96) + Linear(96->1)


def sar_grad(variant, t):
    torch.manual_seed(0)
    net = build_stori(1, n_sar=2, hidden=8, **{k: v for k, v in
                                               StoriConfig(variant=variant).arch.items()
                                               if k != "hidden"})
    x = torch.rand(3, 6)
    m = torch.ones(3, 6)
    s = torch.rand(3, 6, 2, requires_grad=True)
    xr_ = x.clone().requires_grad_(True)
    out = net(xr_, m, s, torch.arange(6.0))
    gs, gx = torch.autograd.grad(out["xhat_f"][:, t].sum(), (s, xr_))
    return gs[:, t].abs().sum().item(), gx[:, t].abs().sum().item()


def test_sar_step_used_by_fixed_not_by_faithful():
    # faithful: x̂_t is regressed before SAR_t is consumed; fixed: the SAR chain goes first
    gs_faithful, gx_faithful = sar_grad("faithful", 3)
    gs_fixed, gx_fixed = sar_grad("fixed", 3)
    assert gs_faithful == 0.0 and gs_fixed > 0.0
    assert gx_faithful == 0.0 and gx_fixed == 0.0  # never sees x_t itself


def test_time_gaps_torch_matches_numpy(rng):
    m = rng.random((7, 15)) > 0.5
    pos = np.cumsum(rng.integers(1, 3, 15)).astype(float)
    t = np.datetime64("2021-01-01", "ns") + (pos * 86400e9).astype("timedelta64[ns]")
    da = xr.DataArray(m.T, dims=("time", "p"), coords={"time": t})
    ref = time_gaps(da, units="days").values.T
    got = time_gaps_torch(torch.as_tensor(m, dtype=torch.float32), torch.as_tensor(pos)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_loss_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = {"xhat_f": torch.zeros(2, 2), "xhat_b": torch.ones(2, 2),
           "xc_f": torch.tensor([[1.0, 2.0], [3.0, 0.0]]),
           "xc_b": torch.tensor([[1.0, 2.0], [3.0, 1.0]])}
    lf = (1 + 3) / (2 + 1e-5) + 2 / (1 + 1e-5)
    lb = (0 + 2) / (2 + 1e-5) + 1 / (1 + 1e-5)
    exp = lf + lb + 0.1 * (1 / 4)
    assert stori_loss(out, x, m).item() == pytest.approx(exp, rel=1e-6)


def test_observed_kept_and_outputs(scene, filled):
    obs = scene.ndvi.notnull().values
    v = filled.ndvi.values
    assert np.array_equal(v[obs].view(np.uint32), scene.ndvi.values[obs].view(np.uint32))
    assert np.isfinite(v).all()
    np.testing.assert_array_equal(filled.ndvi_filled.values, ~obs)
    u = filled.ndvi_uncertainty.values
    assert (u[obs] == 0).all() and (u[~obs] >= 0).all() and (u[~obs] > 0).any()


def test_lazy_one_training_task_numpy_equals_dask_chunk_invariant(scene, filled):
    lazy = scene.chunk({"time": -1, "y": 5, "x": 7})
    with raise_if_dask_computes():
        out = gapfill(lazy, config=TINY)
    layers = [str(k) for k in out.ndvi.data.dask.layers]
    assert sum(k.startswith("xfusion.gapfill-train-") for k in layers) == 1
    assert any(k.startswith("xfusion.gapfill-") and "train" not in k for k in layers)
    got = out.compute()
    xr.testing.assert_allclose(got, filled, atol=1e-6)
    other = gapfill(scene.chunk({"time": -1, "y": 12, "x": 4}), config=TINY).compute()
    xr.testing.assert_allclose(other, filled, atol=1e-6)


def test_deterministic_and_seeded(scene, filled):
    again = gapfill(scene, config=TINY)
    xr.testing.assert_identical(again, filled)
    other = gapfill(scene, config=TINY, seed=1)
    assert not np.array_equal(other.ndvi.values, filled.ndvi.values)


def test_weights_roundtrip_and_registry(scene, tmp_path):
    w = fit_stori(scene, config=TINY)
    assert isinstance(w, StoriWeights) and w.n_sar == 2 and len(w.history) == 2
    path = tmp_path / "stori.safetensors"
    w.save(path)
    a = gapfill(scene, weights=w)
    b = gapfill(scene.chunk({"time": -1, "y": 6, "x": 6}), weights=str(path)).compute()
    xr.testing.assert_allclose(a, b, atol=1e-6)
    xr.testing.assert_identical(a, gapfill(scene, config=TINY))  # same as training inline
    loaded = StoriWeights.load(path)
    assert loaded.meta["stori"]["sar"] == ["vh_db", "rvi"] and loaded.token != w.token
    import xfusion.models

    assert "stori" in [arch.name for arch in xfusion.models.list_architectures()]
    net = xfusion.models.build_from_checkpoint(str(path), "stori")
    assert sum(p.numel() for p in net.parameters()) > 0
    with pytest.raises(WeightsMismatchError, match=r"trained with 2 SAR feature\(s\)"):
        gapfill(scene, sar=["vh_db"], weights=path)


def test_faithful_variant_and_sar_gaps(scene, filled):
    out = gapfill(scene, config=TINY, variant="faithful")
    assert np.isfinite(out.ndvi.values).all()
    assert not np.allclose(out.ndvi.values, filled.ndvi.values)
    holes = scene.copy()
    vh = holes.vh_db.values.copy()
    vh[::3] = np.nan  # a SAR acquisition missing every third period
    vh[:, 0, 0] = np.nan  # and one pixel without SAR at all
    holes["vh_db"] = holes.vh_db.copy(data=vh)
    res = gapfill(holes, config=TINY)
    assert np.isfinite(res.ndvi.values).all()


def test_training_reduces_the_loss():
    ds = synthetic_series((16, 16), seed=5)
    w = fit_stori(ds, config=StoriConfig(variant="fixed", hidden=8, epochs=6, batch_size=32, patience=None))
    h = w.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert w.meta["training"]["n_val"] > 0 and w.meta["training"]["n_train"] > 0


def test_not_enough_observed_pixels(scene):
    sparse = scene.copy()
    v = np.full(scene.ndvi.shape, np.nan, "float32")
    v[::20] = 0.5  # three observations per pixel at most
    sparse["ndvi"] = scene.ndvi.copy(data=v)
    with pytest.raises(NotEnoughDataError, match=r"at least 4 observations of 'ndvi'"):
        gapfill(sparse, config=StoriConfig(variant="fixed", hidden=4, epochs=1, min_observed=4))


@pytest.mark.gpu
def test_cuda_inference_matches_cpu(scene):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    w = fit_stori(scene, config=TINY, device="cuda")
    cpu = gapfill(scene, weights=w, device="cpu")
    gpu = gapfill(scene.chunk({"time": -1, "y": 6, "x": 6}), weights=w, device="auto").compute()
    xr.testing.assert_allclose(cpu, gpu, atol=1e-4)
