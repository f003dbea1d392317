"""SIF-CNN-SR: the U-Net, its losses, self-supervised training and lazy tiled inference."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from xfusion.config import EngineConfig
from xfusion.engine.run import map_model
from xfusion.errors import WeightsMismatchError
from xfusion.methods.super_resolve import super_resolve, train_sif_sr
from xfusion.models import sifsr
from xfusion.models.sifsr import SIFUNet
from xfusion.testing import raise_if_dask_computes, synthetic_scene
from xfusion.training import read_metadata

TINY = {"variant": "paper", "width": 4, "epochs": 2, "steps_per_epoch": 2, "batch_size": 4,
        "patch": 32}


def _random_bn(model, seed=0):
    """Give BatchNorm layers non-trivial running statistics (eval-mode outputs vary)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def scene():
    sc, modis = synthetic_scene((96, 96), times=["2021-07-15T10:30"], coarse_factor=4,
                                ndvi=True, coarse_native=True, bias=0.0, noise=0.2,
                                coarse_cloud_fraction=0.0, seed=3)
    return modis["coarse"].isel(time=0).rename("lst"), sc["ndvi"].isel(time=0)


@pytest.fixture(scope="module")
def weights(scene, tmp_path_factory):
    lst, ndvi = scene
    return train_sif_sr(lst, guide=ndvi, out=tmp_path_factory.mktemp("w") / "sif.safetensors",
                        device="cpu", **TINY)


# ------------------------------------------------------------------------------- network


def test_paper_parameter_count_and_halo():
    m = SIFUNet(2, 16)
    assert sum(p.numel() for p in m.parameters()) == 282_705
    bn = sum(b.numel() for n, b in m.named_buffers() if "num_batches" not in n)
    assert bn == 1_184
    assert m.halo == 72 and m.halo % 8 == 0 and 2 * m.halo >= sifsr.receptive_field()


def test_influence_stays_within_the_halo():
    torch.manual_seed(0)
    m = _random_bn(SIFUNet(2, 4))
    x = torch.randn(1, 2, 192, 192)
    with torch.no_grad():
        x2 = x.clone()
        x2[0, :, 96, 96] += 5.0
        d = (m(x2) - m(x)).abs()[0, 0].numpy() > 0
    rows, cols = np.nonzero(d)
    radius = max(96 - rows.min(), rows.max() - 96, 96 - cols.min(), cols.max() - 96)
    assert 40 < radius <= m.halo  # the perturbation travels far, but not past the halo


def test_tiled_equals_untiled_only_with_half_pixel_upsampling(rng):
    import dask.array as da

    x = rng.normal(size=(1, 2, 160, 160)).astype("float32")
    diffs = {}
    for align_corners in (False, True):
        torch.manual_seed(1)
        m = _random_bn(SIFUNet(2, 4, align_corners=align_corners))
        with torch.no_grad():
            ref = m(torch.from_numpy(x)).numpy()
        out = map_model(da.from_array(x, chunks=(1, 2, 80, 80)), m,
                        config=EngineConfig(tile=40)).compute()
        diffs[align_corners] = float(np.abs(out - ref).max())
    assert diffs[False] < 1e-6
    # the paper's align_corners=True maps pixels by the input SIZE: tiles then differ
    assert diffs[True] > 20 * max(diffs[False], 1e-7)


# ------------------------------------------------------------------------------- losses


def test_psf_sigmas_of_the_paper():
    assert sifsr.sigma_from_mtf(0.1, 4) == pytest.approx(2.7323, abs=1e-4)
    assert sifsr.sigma_from_mtf(0.25, 4) == pytest.approx(2.1201, abs=1e-4)
    k = sifsr.gaussian_kernel(2.73)
    assert k.shape == (9, 9) and float(k.sum()) == pytest.approx(1.0)


def test_losses_vanish_on_consistent_inputs():
    const = torch.full((2, 1, 32, 32), 1.5)
    coarse = torch.full((2, 1, 8, 8), 1.5)
    assert float(sifsr.reconstruction_loss(const, coarse, scale=4, sigma=2.73)) < 1e-10
    assert float(sifsr.reconstruction_loss(const, coarse + 3.0, scale=4, sigma=2.73)) \
        == pytest.approx(2.5)  # Huber(3) = 3 - 0.5
    g = torch.randn(2, 1, 32, 32)
    for kind in ("sobel", "highpass"):
        assert float(sifsr.texture_loss(-0.5 * g, g, gamma=-0.5, kind=kind, sigma=2.12)) < 1e-12
        assert float(sifsr.texture_loss(0.5 * g, g, gamma=-0.5, kind=kind, sigma=2.12)) > 0.0
    assert sifsr.sobel(g).shape == (2, 4, 32, 32)
    total = sifsr.sif_loss(const, coarse, g, scale=4, alpha=0.99, gamma=-0.5)
    tex = sifsr.texture_loss(const, g, gamma=-0.5)
    assert float(total) == pytest.approx(0.01 * float(tex), rel=1e-5)


def test_masked_huber_ignores_masked_pixels():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.zeros(1, 1, 4, 4)
    b[0, 0, 0, 0] = 100.0
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 0] = False
    assert float(sifsr.huber(a, b, mask)) == 0.0
    assert float(sifsr.huber(a, b)) == pytest.approx((100 - 0.5) / 16)


# ------------------------------------------------------------------------------- training


def test_checkpoint_holds_weights_and_normalisation(weights, scene):
    lst, _ndvi = scene
    meta = read_metadata(weights)
    assert meta["arch"] == "sif-sr" and meta["method"] == "sif-sr1" and meta["scale"] == 4
    assert meta["nbands"] == 2 and meta["inputs"] == ["lst", "ndvi"]
    assert meta["arch_params"] == {"width": 4, "align_corners": False, "global_skip": True}
    assert meta["variant"] == "paper"
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    assert abs(mean[0] - float(lst.mean())) < 3 * float(lst.std())
    assert 0 < std[0] < 20 and 0 < std[1] < 1 and -1 < mean[1] < 1
    assert meta["training"]["epochs_run"] == 2 and len(meta["training"]["history"]) == 2
    assert meta["training"]["n_val_patches"] > 0


def test_inference_lazy_chunk_invariant_on_the_guide_grid(weights, scene):
    lst, ndvi = scene
    ref = super_resolve(lst, guide=ndvi, weights=weights)
    assert ref.odc.geobox == ndvi.odc.geobox and ref.name == "lst"
    assert np.isfinite(ref.values).all()
    with raise_if_dask_computes():
        out = lst.chunk({"y": 7, "x": 5}).fusion.super_resolve(guide=ndvi.chunk(40),
                                                               weights=weights,
                                                               engine=EngineConfig(tile=32))
    assert dask.is_dask_collection(out.data)
    assert any(str(k).startswith("xfusion.super_resolve.sif-sr1-")
               for k in out.data.__dask_graph__().layers)
    np.testing.assert_allclose(out.values, ref.values, atol=1e-3)
    # output in kelvin, close to the coarse input at the coarse scale
    assert abs(float(out.mean()) - float(lst.mean())) < 1.0


def test_nan_holes_stay_nan_and_do_not_spread(weights, scene):
    lst, ndvi = scene
    ref = super_resolve(lst, guide=ndvi, weights=weights).values
    holed = lst.copy()
    holed[0:2, 0:2] = np.nan
    g = ndvi.copy()
    g[60, 50] = np.nan
    out = super_resolve(holed, guide=g, weights=weights).values
    nan = np.zeros(out.shape, bool)
    nan[0:8, 0:8] = True
    nan[60, 50] = True
    assert np.isnan(out[nan]).all() and np.isfinite(out[~nan]).all()
    # beyond the receptive field (72 px) of the coarse hole's bicubic footprint (coarse px
    # 0..3 with the cubic support: fine px 0..15) and of the guide hole, nothing changes
    rows = np.arange(96)[:, None]
    cols = np.arange(96)[None, :]
    d_coarse = np.maximum(np.maximum(rows - 15, 0), np.maximum(cols - 15, 0))
    d_guide = np.maximum(np.abs(rows - 60), np.abs(cols - 50))
    far = (d_coarse > 72) & (d_guide > 72)
    changed = np.abs(out - ref) > 1e-4
    assert not changed[far].any()
    assert changed[~far & ~nan].any()


def test_weights_must_fit_the_guide_and_the_scale(weights, scene):
    lst, ndvi = scene
    two = xr.Dataset({"ndvi": ndvi, "red": ndvi * 0.5})
    with pytest.raises(WeightsMismatchError, match="take 2 input channels"):
        super_resolve(lst, guide=two, weights=weights)
    half = ndvi.coarsen(x=2, y=2).mean()
    half = half.assign_coords(xr.Dataset(coords=dict(half.coords)).coords)
    half = half.odc.assign_crs(ndvi.odc.crs)
    with pytest.raises(WeightsMismatchError, match="trained for scale=4"):
        super_resolve(lst, guide=half, weights=weights)
    with pytest.raises(WeightsMismatchError, match="trained for method 'sif-sr1'"):
        super_resolve(lst, guide=ndvi, method="sif-sr2", weights=weights)


def test_train_on_the_fly_and_sif_sr2(scene):
    lst, ndvi = scene
    tiny = {**TINY, "epochs": 1, "val_fraction": 0}
    out = super_resolve(lst, guide=ndvi, method="sif-sr2", weights="train",
                        params={"train": tiny}, device="cpu")
    assert out.shape == ndvi.shape and np.isfinite(out.values).all()
    assert out.attrs["super_resolve_method"] == "sif-sr2"
