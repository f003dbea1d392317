"""Landsat-8 -> Sentinel-2 harmonization: U-Net sizes, uncertainty, tiling seams, training."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

import xfusion
from xfusion.config import EngineConfig
from xfusion.errors import InvalidParameterError, VariableNotFoundError, WeightsMismatchError
from xfusion.methods.harmonize import L8_BANDS, S2_BANDS, harmonize, train_harmonizer
from xfusion.methods.super_resolve import super_resolve
from xfusion.models import harmonize_unet as hu
from xfusion.testing import raise_if_dask_computes, synthetic_scene
from xfusion.training import read_metadata, save_checkpoint


def _pair(seed, n=96):
    sc, l8 = synthetic_scene((n, n), times=["2021-07-15T10:30"], kind="reflectance",
                             bands=list(L8_BANDS), coarse_factor=3, resolution=10.0,
                             coarse_native=True, seed=seed, cloud_fraction=0.0,
                             coarse_cloud_fraction=0.0, fine_times=[0])
    l8 = l8.rename({f"coarse_{b}": b for b in L8_BANDS}).isel(time=0)
    s2 = xr.Dataset({s: sc[f"truth_{b}"].isel(time=0) * 1.03 + 0.005
                     for b, s in zip(L8_BANDS, S2_BANDS, strict=True)})
    return l8, s2


@pytest.fixture(scope="module")
def pair():
    return _pair(0)


@pytest.fixture(scope="module")
def trained(pair, tmp_path_factory):
    l8, s2 = pair
    out = tmp_path_factory.mktemp("h") / "harm.safetensors"
    return train_harmonizer(l8, s2, out=out, members=2, depth=3, width=4, epochs=2,
                            steps_per_epoch=2, batch_size=4, patch=32, device="cpu")


def _blur_unet(depth=5):
    """A U-Net whose every layer averages: a large, smooth effective receptive field (random
    initial weights barely reach beyond a few pixels, which would make seam tests vacuous)."""
    m = hu.HarmonizeUNet(6, 6, depth=depth, width=4)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.fill_(1.0 / (mod.weight.shape[1] * mod.weight.shape[-1] ** 2))
                mod.bias.zero_()
            if isinstance(mod, torch.nn.PReLU):
                mod.weight.fill_(1.0)
    return m.eval()


@pytest.fixture(scope="module")
def blur_ckpt(tmp_path_factory):
    m = _blur_unet()
    path = tmp_path_factory.mktemp("b") / "blur.safetensors"
    save_checkpoint(path, {"member0": m}, {
        "arch": "harmonize-unet", "nbands": 6, "method": "harmonize", "scale": 3,
        "arch_params": {"out_channels": 6, "depth": 5, "width": 4, "upsample": "upsample"},
        "halo": m.halo, "pan": False, "inputs": list(L8_BANDS), "outputs": list(S2_BANDS)})
    return path


# ------------------------------------------------------------------------------- network


@pytest.mark.parametrize(("name", "count"), [("d5-up", 28_945_432), ("d5-shuffle", 56_453_916),
                                             ("d6-up", 115_984_412),
                                             ("d6-shuffle", 226_334_497)])
def test_published_configurations_are_constructible(name, count):
    with torch.device("meta"):
        m = hu.HarmonizeUNet(7, 6, **hu.CONFIGURATIONS[name])
    assert sum(p.numel() for p in m.parameters()) == count


def test_small_default_and_influence_within_halo():
    torch.manual_seed(0)
    m = hu.HarmonizeUNet().eval()
    assert sum(p.numel() for p in m.parameters()) < 150_000 and m.halo == 28
    x = torch.randn(1, 6, 120, 120)
    with torch.no_grad():
        x2 = x.clone()
        x2[0, :, 60, 60] += 5
        d = ((m(x2) - m(x)).abs()[0].amax(0) > 0).numpy()
    rows, cols = np.nonzero(d)
    assert max(60 - rows.min(), rows.max() - 60, 60 - cols.min(), cols.max() - 60) <= m.halo
    assert 2 * m.halo >= hu.receptive_field(3)


def test_odd_sizes_and_shuffle_decoder():
    m = hu.HarmonizeUNet(7, 6, depth=3, width=4, upsample="shuffle")
    assert m(torch.randn(2, 7, 37, 45)).shape == (2, 6, 37, 45)


def test_ensemble_mean_and_unbiased_std():
    torch.manual_seed(0)
    a, b = hu.HarmonizeUNet(width=4).eval(), hu.HarmonizeUNet(width=4).eval()
    x = torch.randn(1, 6, 16, 16)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        out = hu.Ensemble([a, b])(x)
        same = hu.Ensemble([a, a])(x)
        single = hu.Ensemble([a])(x)
    torch.testing.assert_close(out[:, :6], (ya + yb) / 2)
    torch.testing.assert_close(out[:, 6:], (ya - yb).abs() / 2**0.5)
    assert float(same[:, 6:].abs().max()) == 0.0 and float(single[:, 6:].abs().max()) == 0.0


def test_mc_dropout_is_seeded_and_vanishes_without_dropout():
    torch.manual_seed(0)
    m = hu.HarmonizeUNet(width=4).eval()
    x = torch.randn(1, 6, 16, 16)
    with torch.no_grad():
        mc = hu.MCDropout(m, passes=8, p=0.2, seed=3)
        a, b = mc(x), mc(x)
        none = hu.MCDropout(m, passes=3, p=0.0)(x)
        plain = m(x)
    torch.testing.assert_close(a, b)
    assert float(a[:, 6:].min()) >= 0 and float(a[:, 6:].mean()) > 0
    torch.testing.assert_close(none[:, :6], plain)
    assert float(none[:, 6:].abs().max()) == 0.0
    assert all(blk.p == 0.0 for blk in m.modules() if isinstance(blk, hu._Block))


# ------------------------------------------------------------------------------- inference


def test_tiled_matches_untiled_without_seams(blur_ckpt):
    """Receptive field 230 px, halo 32 px: tiles + cosine blending on 2 x 2 chunks stay close
    to the untiled result, and the error at chunk borders is no larger than elsewhere (with
    blend="none" it is larger: the test can fail)."""
    l8, _ = _pair(1, n=192)
    full = harmonize(l8, weights=blur_ckpt, engine=EngineConfig(tile=None, halo=128))
    with raise_if_dask_computes():
        tiled = harmonize(l8.chunk({"x": 32, "y": 32}), weights=blur_ckpt, halo=32, tile=64)
    assert dask.is_dask_collection(tiled.B02.data)
    errs = {}
    for blend, out in (("cosine", tiled), ("none", harmonize(l8.chunk({"x": 32, "y": 32}),
                                                             weights=blur_ckpt, halo=32,
                                                             tile=64, blend="none"))):
        errs[blend] = np.stack([np.abs(out[b].values - full[b].values) for b in S2_BANDS]).max(0)
    border = np.zeros((192, 192), bool)
    border[95:97, :] = True  # the chunk borders on the 10 m grid (32 Landsat px x 3)
    border[:, 95:97] = True
    err = errs["cosine"]
    assert err.max() < 0.1 * float(np.nanstd(full.B04.values))
    assert err[border].max() <= err[~border].max()
    assert errs["none"][border].max() > errs["none"][~border].max()
    assert err.mean() < errs["none"].mean()
    jumps = np.abs(np.diff(tiled.B04.values, axis=1))
    assert jumps[:, 95].max() <= jumps.max()


def test_trained_ensemble_lazy_chunk_invariant_with_uncertainty(pair, trained):
    l8, s2 = pair
    meta = read_metadata(trained)
    assert meta["nets"] == ["member0", "member1"] and meta["outputs"] == list(S2_BANDS)
    assert meta["inputs"] == list(L8_BANDS) and meta["scale"] == 3 and not meta["pan"]
    ref = harmonize(l8, weights=trained, uncertainty="ensemble")
    assert set(ref.data_vars) == set(S2_BANDS) | {f"{b}_std" for b in S2_BANDS}
    assert ref.B02.dims == ("y", "x") and ref.odc.geobox == s2.odc.geobox
    with raise_if_dask_computes():
        out = l8.chunk({"x": 11, "y": 13}).fusion.harmonize(weights=trained,
                                                             uncertainty="ensemble")
    xr.testing.assert_allclose(out.compute(), ref, atol=1e-5)
    assert float(ref.B8A_std.min()) >= 0 and float(ref.B8A_std.max()) > 0
    mean_only = harmonize(l8, weights=trained)
    xr.testing.assert_allclose(mean_only.B03, ref.B03, atol=1e-6)
    mc = super_resolve(l8, method="harmonize", weights=trained,
                       params={"uncertainty": "mc-dropout", "passes": 4})
    assert float(mc.B11_std.mean()) > 0


def test_nan_pixels_stay_nan(pair, trained):
    l8, _ = pair
    holed = l8.copy(deep=True)
    holed["red"][5, 7] = np.nan
    out = harmonize(holed, weights=trained)
    nan = np.isnan(out.B04.values)
    assert nan[15:18, 21:24].all() and nan.sum() == 9


def test_bad_inputs(pair, trained):
    l8, _ = pair
    with pytest.raises(WeightsMismatchError, match="take 6 Landsat band"):
        harmonize(l8, weights=trained, bands=["red", "green", "blue"])
    with pytest.raises(VariableNotFoundError, match="'swir22' is not on the dataset"):
        harmonize(l8.drop_vars("swir22"), weights=trained)
    with pytest.raises(InvalidParameterError, match="two or more members"):
        harmonize(l8, weights=_single(trained), uncertainty="ensemble")
    with pytest.raises(InvalidParameterError, match="Unknown uncertainty='bayes'"):
        harmonize(l8, weights=trained, uncertainty="bayes")


def _single(path):
    from xfusion.training import load_checkpoint

    ck = load_checkpoint(path)
    out = str(path).replace(".safetensors", "-one.safetensors")
    meta = {k: v for k, v in ck.metadata.items() if k not in ("nets", "content_sha256")}
    save_checkpoint(out, {"member0": ck.state_dict("member0")}, meta)
    return out


def test_ensemble_from_separate_files_equals_one_file(pair, trained):
    l8, _ = pair
    one = harmonize(l8, weights=_single(trained))
    both = harmonize(l8, weights=[_single(trained), _single(trained)], uncertainty="ensemble")
    xr.testing.assert_allclose(both.B12, one.B12, atol=1e-6)
    assert float(np.abs(both.B12_std).max()) == 0.0
    assert xfusion.harmonize is harmonize


def test_pan_variant_takes_the_pan_as_guide(pair, tmp_path):
    l8, s2 = pair
    pan = ((s2.B03 + s2.B04) / 2).rename("pan")  # a 7th input on the 10 m grid
    w = train_harmonizer(l8, s2, out=tmp_path / "pan.safetensors", pan=pan, depth=2, width=4,
                         epochs=1, steps_per_epoch=1, batch_size=2, patch=32, device="cpu")
    meta = read_metadata(w)
    assert meta["pan"] and meta["nbands"] == 7 and meta["inputs"][-1] == "pan"
    out = harmonize(l8.chunk(16), weights=w, guide=pan.chunk(48))
    assert out.odc.geobox == pan.odc.geobox and np.isfinite(out.B8A.values).all()
    xr.testing.assert_allclose(out.compute(), harmonize(l8, weights=w, guide=pan), atol=1e-5)
    with pytest.raises(InvalidParameterError, match="use the Landsat pan band: pass it as guide="):
        harmonize(l8, weights=w)


# ------------------------------------------------------------------------------- calibration


def test_calibration_fits_a_known_heteroscedastic_error():
    """Errors whose std is 0.5 x the spread plus 2 x the local detail: the fit recovers a
    std that covers about 68 % / 95 % of them and ranks them."""
    from xfusion.training.harmonize import calibration_report, fit_calibration

    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 2, 32, 32, generator=gen).cumsum(-1) * 0.05
    spread = torch.rand(4, 2, 32, 32, generator=gen) * 0.2
    detail = hu.local_detail(mean, 3)
    true_std = torch.sqrt((0.5 * spread) ** 2 + (2.0 * detail) ** 2 + 0.01**2)
    truth = mean + true_std * torch.randn(mean.shape, generator=gen)
    cal = fit_calibration(mean, spread, truth, steps=400)
    assert len(cal["a"]) == 2 and len(cal["c"]) == len(hu.DETAIL_WINDOWS)
    std = hu.calibrated_std(spread, [hu.local_detail(mean, w) for w in hu.DETAIL_WINDOWS],
                            torch.tensor(cal["a"]), list(torch.tensor(cal["c"])),
                            torch.tensor(cal["s0"]))
    rep = calibration_report(mean.numpy(), std.numpy(), truth.numpy())
    raw = calibration_report(mean.numpy(), spread.numpy(), truth.numpy())
    assert 0.6 < rep["within_1std"] < 0.76 and 0.91 < rep["within_2std"] < 0.98
    assert rep["spearman"] > raw["spearman"] and rep["spearman"] > 0.4


def test_training_stores_a_calibration_that_harmonize_applies(trained, pair):
    l8, _s2 = pair
    meta = read_metadata(trained)
    cal = meta["calibration"]
    assert set(cal) == {"ensemble", "mc-dropout"}
    for mode in cal.values():
        assert mode["validation_calibrated"]["n"] > 0
        assert 0.85 < mode["validation_calibrated"]["within_2std"] <= 1.0
    raw = harmonize(l8, weights=trained, uncertainty="ensemble", calibrate=False)
    out = harmonize(l8, weights=trained, uncertainty="ensemble")
    xr.testing.assert_allclose(out.B04, raw.B04)  # the mean is untouched
    assert float(out.B04_std.min()) > 0.0 and not np.allclose(out.B04_std, raw.B04_std)
    # lazy and chunk-invariant with the calibration's extra halo (the ensemble: MC-dropout
    # masks differ between tiles by design)
    with raise_if_dask_computes():
        lazy = harmonize(l8.chunk(12), weights=trained, uncertainty="ensemble")
    assert float(np.abs(lazy.B04_std - out.B04_std).max()) < 1e-5
    # another dropout than the calibrated one: the raw spread
    other = harmonize(l8, weights=trained, uncertainty="mc-dropout", dropout=0.2)
    same = harmonize(l8, weights=trained, uncertainty="mc-dropout", dropout=0.2,
                     calibrate=False)
    xr.testing.assert_allclose(other.B04_std, same.B04_std)
