"""STTFN: STC weighting identities, known answers, numpy == dask, chunk invariance, laziness,
determinism, weights (general regime), bad inputs, CLI, missing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import dask
import numpy as np
import pytest
import xarray as xr

from xfusion.errors import InvalidParameterError
from xfusion.methods.sttfn import stc_weighting

# --------------------------------------------------------------------------------------------
# STC weighting (numpy only, no torch)


def test_stc_of_identical_predictions_returns_them():
    rng = np.random.default_rng(0)
    p = rng.normal(300, 3, (2, 9, 11))
    m2 = rng.normal(300, 3, (2, 9, 11))
    np.testing.assert_allclose(stc_weighting(p, p.copy(), m2), p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stc_weighting(p, p.copy(), m2, factor=4), p, rtol=0, atol=1e-12)


def test_stc_known_answers():
    p1 = np.array([[300.0, 300.0, 301.0, np.nan, 302.0]])
    p3 = np.array([[302.0, 304.0, 301.0, 305.0, np.nan]])
    m2 = np.array([[301.0, 301.0, 301.0, 300.0, 300.0]])
    out = stc_weighting(p1, p3, m2, eps=1e-3)
    # equal residuals -> 0.5/0.5; residuals 1 and 3 -> weights 3/4 and 1/4
    assert out[0, 0] == pytest.approx(301.0)
    assert out[0, 1] == pytest.approx(0.75 * 300 + 0.25 * 304, abs=1e-3)
    assert out[0, 2] == 301.0  # both residuals ~0: weights 0.5
    assert out[0, 3] == 305.0 and out[0, 4] == 302.0  # one side missing: the other one


def test_stc_coarse_scale_matches_brute_force():
    rng = np.random.default_rng(1)
    p1, p3, m2 = (rng.normal(300, 2, (7, 10)) for _ in range(3))
    p1[0, 0] = np.nan
    out = stc_weighting(p1, p3, m2, eps=1e-3, factor=3)
    ref = np.empty_like(p1)
    for i in range(7):
        for j in range(10):
            cell = (slice(i // 3 * 3, i // 3 * 3 + 3), slice(j // 3 * 3, j // 3 * 3 + 3))
            r1 = abs(np.nanmean(p1[cell] - m2[cell])) + 1e-3
            r3 = abs(np.mean(p3[cell] - m2[cell])) + 1e-3
            w1 = (1 / r1) / (1 / r1 + 1 / r3)
            ref[i, j] = p3[i, j] if np.isnan(p1[i, j]) else w1 * p1[i, j] + (1 - w1) * p3[i, j]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# combination by temporal distance, target offsets


def test_stc_prior_and_time_only_known_answers():
    p1 = np.array([[300.0, 300.0, 301.0, np.nan]])
    p3 = np.array([[302.0, 304.0, 303.0, 305.0]])
    m2 = np.array([[301.0, 303.0, 300.0, 300.0]])
    q = 0.25
    time_only = stc_weighting(p1, p3, m2, prior=q, residuals=False)
    np.testing.assert_allclose(time_only[0, :3], q * p1[0, :3] + (1 - q) * p3[0, :3])
    assert time_only[0, 3] == 305.0  # one side missing: the other one
    both = stc_weighting(p1, p3, m2, prior=q, eps=1e-9)
    # equal residuals -> the prior; residuals 3 and 1 with prior 1/4 -> 1/12 : 3/4, i.e. 1/10
    assert both[0, 0] == pytest.approx(q * 300 + (1 - q) * 302)
    assert both[0, 1] == pytest.approx(0.1 * 300 + 0.9 * 304)
    # a per-pixel prior broadcasts; the default prior is the paper's equal weighting
    qq = np.array([[0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(stc_weighting(p1, p3, m2, prior=qq), stc_weighting(p1, p3, m2))
    with pytest.raises(InvalidParameterError, match="needs prior="):
        stc_weighting(p1, p3, m2, residuals=False)


def test_import_does_not_need_torch_and_calling_names_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import xfusion, xfusion.methods.sttfn, xfusion.training, xfusion.models\n"
        "from xfusion.testing import synthetic_scene\n"
        "s = synthetic_scene((32, 32), times=3, fine_times=[0, 2])\n"
        "try:\n"
        "    s.fusion.sttfn(fine='fine', coarse='coarse')\n"
        "except xfusion.errors.MissingOptionalDependency as e:\n"
        "    print('OK', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("OK torch is required for sttfn()")
    assert "pip install 'xfusion[torch]'" in res.stdout


# --------------------------------------------------------------------------------------------
# the method (torch)

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import xfusion
from xfusion.errors import (
    CheckpointError,
    NoOverlapError,
    NotEnoughDataError,
    WeightsMismatchError,
)
from xfusion.methods.sttfn import sttfn, train_sttfn
from xfusion.testing import raise_if_dask_computes, synthetic_scene

TINY = {"sr_width": 4, "feat": 4, "width": 4}
FAST = {"epochs": 1, "patches": 8, "patch_size": 24, "batch_size": 4, "arch_params": TINY}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scene(size=48, chunks=None, seed=0, **kw):
    opts = {"times": 3, "fine_times": [0, 2], "cloud_fraction": 0.0,
            "coarse_cloud_fraction": 0.0, "coarse_factor": 16, "seed": seed}
    opts.update(kw)
    if chunks:
        opts["chunks"] = {"time": 1, "y": chunks, "x": chunks}
    return synthetic_scene((size, size), **opts).drop_vars("truth")


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """Nets trained once (general regime, two regions), reused by the inference tests."""
    path = tmp_path_factory.mktemp("w") / "sttfn.safetensors"
    cubes = [_scene(40, seed=1), _scene(40, seed=2)]
    trained = train_sttfn(cubes, fine="fine", coarse="coarse", out=path, seed=0, **FAST)
    return path, trained


def test_untrained_nets_give_stc_of_fine_plus_change(backend):
    s = _scene(36, chunks=16 if backend == "dask" else None)
    out = sttfn(s, fine="fine", coarse="coarse", variant="paper", epochs=0, patches=4,
                patch_size=16, arch_params=TINY, diagnostics=True)
    assert str(out.pair_time.values[0])[:10] == "2021-04-03"
    assert str(out.pair_time_after.values[0])[:10] == "2021-05-05"
    v = {k: np.asarray(s[k].values, np.float64) for k in ("fine", "coarse")}
    p1 = v["fine"][0] + v["coarse"][1] - v["coarse"][0]
    p3 = v["fine"][2] + v["coarse"][1] - v["coarse"][2]
    ref = stc_weighting(p1, p3, v["coarse"][1])
    got = out.compute()
    np.testing.assert_allclose(got.fine_forward.values[0], p1, atol=2e-3)
    np.testing.assert_allclose(got.fine_backward.values[0], p3, atol=2e-3)
    np.testing.assert_allclose(got.fine.values[0], ref, atol=3e-3)
    assert got.fine.dtype == np.float32 and got.fine.dims == ("time", "y", "x")


def test_training_numpy_equals_dask_and_is_deterministic():
    a = sttfn(_scene(), fine="fine", coarse="coarse", seed=3, **FAST)
    b = sttfn(_scene(chunks=20), fine="fine", coarse="coarse", seed=3, **FAST)
    c = sttfn(_scene(), fine="fine", coarse="coarse", seed=4, **FAST)
    assert dask.is_dask_collection(b.fine.data) and not dask.is_dask_collection(a.fine.data)
    xr.testing.assert_allclose(a.fine, b.fine.compute(), atol=1e-3)
    assert not np.allclose(a.fine.values, c.fine.values)
    rec = json.loads(a.attrs["xfusion_sttfn"])
    assert rec["regime"] == "per-triplet" and rec["triplets"][0]["t1"] == "2021-04-03"
    assert set(rec["triplets"][0]["metrics"]) == {"forward", "backward"}


def test_weights_inference_is_lazy_and_chunk_invariant(saved_weights):
    path, _ = saved_weights
    ref = sttfn(_scene(45), fine="fine", coarse="coarse", weights=path)
    for chunks, tile in ((15, 512), (23, 8), (45, None)):
        s = _scene(45, chunks=chunks)
        with raise_if_dask_computes():
            out = s.fusion.sttfn(fine="fine", coarse="coarse", weights=path, tile=tile)
        assert dask.is_dask_collection(out.fine.data)
        assert any(str(k).startswith("xfusion.sttfn") for k in out.fine.data.dask.layers)
        xr.testing.assert_allclose(out.fine.compute(), ref.fine, atol=1e-3)
    rec = json.loads(ref.attrs["xfusion_sttfn"])
    assert rec["regime"] == "weights" and rec["training"] == "general"


TINY_V2 = {"sr_width": 4, "feat": 4, "width": 4, "ctx_width": 4, "init": "default"}


def test_v2_per_triplet_and_weights_are_chunk_invariant(tmp_path):
    """xfusion-v2 (95 px receptive radius, wider than every chunk here): the engine's halo is
    the net's, so tiled inference equals the untiled one; saved nets reproduce the result."""
    s = _scene(60, coarse_cloud_fraction=0.3)
    a = sttfn(s, fine="fine", coarse="coarse", arch="xfusion-v2", arch_params=TINY_V2,
              epochs=1, patches=4, patch_size=32, min_valid=0.1, save=tmp_path)
    path = next(tmp_path.iterdir())
    meta = xfusion.training.read_metadata(path)
    assert meta["arch"] == "xfusion-v2" and meta["halo"] == 95
    assert json.loads(a.attrs["xfusion_sttfn"])["arch"] == "xfusion-v2"
    for chunks, tile in ((20, 512), (32, 24)):
        with raise_if_dask_computes():
            out = sttfn(_scene(60, chunks=chunks, coarse_cloud_fraction=0.3), fine="fine",
                        coarse="coarse", weights=path, tile=tile)
        xr.testing.assert_allclose(out.fine.compute(), a.fine, atol=1e-3)
    assert np.isnan(a.fine.values).any() and np.isfinite(a.fine.values).any()


def test_v2_untrained_is_fine_plus_smoothed_change():
    s = _scene(40)
    out = sttfn(s, fine="fine", coarse="coarse", arch="xfusion-v2", epochs=0,
                arch_params={"ctx_box": 5}, diagnostics=True)
    v = {k: np.asarray(s[k].values, np.float64) for k in ("fine", "coarse")}
    change = v["coarse"][1] - v["coarse"][0]
    pad = np.pad(change, 2, constant_values=np.nan)
    smooth = np.nanmean(np.stack([pad[i:i + 40, j:j + 40] for i in range(5) for j in range(5)]),
                        axis=0)
    np.testing.assert_allclose(out.fine_forward.values[0], v["fine"][0] + smooth, atol=2e-3)


def test_general_regime_metadata(saved_weights):
    path, trained = saved_weights
    meta = xfusion.training.read_metadata(path)
    assert meta["method"] == "sttfn" and meta["arch"] == "xfusion-v1" and meta["halo"] == 13
    assert meta["bands"] == ["fine"] and meta["units"] == ["K"]
    assert meta["training"]["regime"] == "general"
    assert [c["cube"] for c in meta["training"]["cases"]] == [0, 1]
    assert len(meta["normalization"]["mean"]) == 1 and meta["normalization"]["std"][0] > 0
    assert trained.path == str(path)
    assert set(meta["metrics"]) == {"forward", "backward"}


def test_accessor_equals_function(saved_weights):
    path, _ = saved_weights
    s = _scene(32)
    xr.testing.assert_identical(s.fusion.sttfn(fine="fine", coarse="coarse", weights=path),
                                xfusion.sttfn(s, fine="fine", coarse="coarse", weights=path))
    assert xr.Dataset.fusion.sttfn.__doc__ == xfusion.sttfn.__doc__


def test_multiband_and_coarse_scale_weighting():
    s = synthetic_scene((40, 40), kind="reflectance", bands=("red", "nir"), times=3,
                        fine_times=[0, 2], cloud_fraction=0.0, coarse_cloud_fraction=0.0,
                        coarse_factor=8)
    fine, coarse = ["fine_red", "fine_nir"], ["coarse_red", "coarse_nir"]
    out = sttfn(s, fine=fine, coarse=coarse, variant="paper", **FAST)
    assert set(out.data_vars) == set(fine)
    c = sttfn(s, fine=fine, coarse=coarse, variant="paper", stc_scale="coarse", **FAST)
    assert np.isfinite(c.fine_nir.values).all()
    assert not np.allclose(c.fine_nir.values, out.fine_nir.values)
    with pytest.raises(InvalidParameterError, match="coarse pixel size in fine pixels"):
        sttfn(s.assign_attrs(coarse_factor=None), fine=fine, coarse=coarse, variant="paper",
              stc_scale="coarse", **FAST)


def test_save_per_triplet_weights_and_reuse(tmp_path):
    s = _scene()
    a = sttfn(s, fine="fine", coarse="coarse", save=tmp_path, **FAST)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["sttfn_2021-04-03_2021-05-05.safetensors"]
    b = sttfn(s, fine="fine", coarse="coarse", weights=tmp_path / files[0])
    xr.testing.assert_allclose(a.fine, b.fine, atol=1e-4)


def test_no_bracketing_pair():
    s = _scene()
    with pytest.raises(NoOverlapError, match=r"target '2021-05-05' has none after it\. Pair "
                       r"dates: \['2021-04-03'\]"):
        sttfn(s.isel(time=[0, 1, 2]).assign_coords(
            observed_fine=("time", [True, False, False])), fine="fine", coarse="coarse",
              targets=["2021-05-05"], **FAST)


def test_too_few_valid_pixels():
    s = _scene()
    s["fine"][0, :, :30] = np.nan
    with pytest.raises(NotEnoughDataError, match=r"too few valid pixels to train its nets: "
                       r"2021-04-03 -> 2021-05-05: 864 of 2304 pixels observed in all inputs "
                       r"\(L_a 864, M_a 2304, L_b 2304, M_b 2304\)"):
        sttfn(s, fine="fine", coarse="coarse", min_valid=0.9, **FAST)


def test_weights_mismatch_and_tampering(saved_weights, tmp_path):
    path, _ = saved_weights
    s = _scene(32)
    with pytest.raises(WeightsMismatchError, match=r"trained on 1 band\(s\) \['fine'\], but the "
                       r"cube gives 2 fine variable"):
        two = s.assign(fine2=s.fine, coarse2=s.coarse).assign_coords(
            observed_fine2=s.observed_fine, observed_coarse2=s.observed_coarse)
        sttfn(two, fine=["fine", "fine2"],
              coarse=["coarse", "coarse2"], weights=path)
    with pytest.raises(WeightsMismatchError, match=r"bands \['fine'\], but the cube's fine "
                       r"variables are \['lst'\]"):
        sttfn(s.rename(fine="lst", observed_fine="observed_lst"), fine="lst", coarse="coarse",
              weights=path)
    s_c = s.copy()
    s_c["fine"].attrs["units"] = "degC"
    with pytest.raises(WeightsMismatchError, match="expect band 'fine' in units 'K', but the "
                       "cube's 'fine' is in 'degC'"):
        sttfn(s_c, fine="fine", coarse="coarse", weights=path)
    with pytest.raises(WeightsMismatchError, match="architecture 'xfusion-v1' but arch='v2'"):
        sttfn(s, fine="fine", coarse="coarse", weights=path, arch="v2")
    bad = tmp_path / "bad.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="integrity check"):
        sttfn(s, fine="fine", coarse="coarse", weights=bad)


def test_bad_options():
    s = _scene()
    with pytest.raises(InvalidParameterError, match=r"Unknown stc_scale='pixel' for sttfn\(\)"):
        sttfn(s, fine="fine", coarse="coarse", stc_scale="pixel")
    with pytest.raises(InvalidParameterError, match="patch_size must be an integer >= 1"):
        sttfn(s, fine="fine", coarse="coarse", patch_size=0)
    with pytest.raises(InvalidParameterError, match="Unknown architecture 'v9'"):
        sttfn(s, fine="fine", coarse="coarse", arch="v9")


def test_cli_fuse_sttfn_multiband_and_weights(tmp_path, saved_weights):
    import rioxarray

    from xfusion.cli import main

    s = synthetic_scene((40, 40), kind="reflectance", bands=("red", "nir"), times=3,
                        fine_times=[0, 2], cloud_fraction=0.0, coarse_cloud_fraction=0.0,
                        coarse_factor=8)
    days = [str(t)[:10] for t in s.time.values]
    args = ["fuse", "sttfn"]
    for i in range(3):
        for role in ("fine", "coarse"):
            if role == "fine" and i == 1:
                continue
            arr = xr.concat([s[f"{role}_red"][i], s[f"{role}_nir"][i]], dim="band")
            p = tmp_path / f"{role}_{i}.tif"
            arr.rio.write_crs(s.odc.crs).rio.to_raster(p)
            args += [f"--{role}", f"{days[i]}={p}"]
    out = tmp_path / "pred.tif"
    rc = main([*args, "--target", days[1], "--out", str(out), "--param", "epochs=1",
               "--param", "seed=2", "--param", "patches=4", "--param", "patch_size=16",
               "--param", 'arch_params={"sr_width": 4, "feat": 4, "width": 4}'])
    assert rc == 0
    pred = rioxarray.open_rasterio(out)
    assert pred.shape == (2, 40, 40) and np.isfinite(pred.values).all()
    # untrained nets combined by temporal distance: the target is halfway, so equal weights
    rc = main([*args, "--target", days[1], "--out", str(tmp_path / "t.tif"), "--param",
               "epochs=0", "--param", "variant=paper", "--param", "combine=time"])
    assert rc == 0
    half = (s.fine_nir[0] + s.fine_nir[2]) / 2 + s.coarse_nir[1] - (s.coarse_nir[0]
                                                                    + s.coarse_nir[2]) / 2
    got = rioxarray.open_rasterio(tmp_path / "t.tif")
    np.testing.assert_allclose(got.values[1], half.values, atol=1e-4)
    assert main([*args, "--out", str(tmp_path / "w.tif"), "--weights", str(saved_weights[0])]) == 1
    rc = main(["fuse", "baseline", *args[2:], "--out", str(tmp_path / "b.tif"), "--weights", "w"])
    assert rc == 2


@pytest.mark.gpu
def test_sttfn_trains_and_infers_on_cuda_with_bf16(saved_weights):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    s = _scene(64, chunks=32)
    out = sttfn(s, fine="fine", coarse="coarse", device="cuda", precision="bf16", **FAST)
    assert np.isfinite(out.fine.values).all()
    rec = json.loads(out.attrs["xfusion_sttfn"])
    assert rec["triplets"][0]["metrics"]["forward"]["device"].startswith("cuda")
    cpu = sttfn(s, fine="fine", coarse="coarse", weights=saved_weights[0], device="cpu")
    gpu = sttfn(s, fine="fine", coarse="coarse", weights=saved_weights[0], device="cuda",
                precision="bf16")
    np.testing.assert_allclose(gpu.fine.values, cpu.fine.values, atol=0.5)


class _Items:
    """``n`` random training items ``([L_ref, M_ref, M_tgt], L_tgt)`` with two bands."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, 4, 4, generator=g)  # nb = 2: [L_ref, M_ref, M_tgt]
        self.y = torch.randn(n, 2, 4, 4, generator=g)

    def set_epoch(self, e):
        pass

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_temporal_mix_interpolates_inputs_and_target_alike():
    from xfusion.training.sttfn import _TemporalMix

    base = _Items(5, seed=0)
    mix = _TemporalMix(base, nb=2, share=1.0, seed=3)
    first = mix[0][1]
    for i in range(5):
        x, y = mix[i]
        torch.testing.assert_close(x[:4], base.x[i, :4])
        a_m = (x[4:] - base.x[i, 2:4]) / (base.x[i, 4:] - base.x[i, 2:4])
        a_y = (y - base.x[i, :2]) / (base.y[i] - base.x[i, :2])
        a = float(a_m.flatten()[0])
        assert 0 <= a <= 1
        torch.testing.assert_close(a_m, torch.full_like(a_m, a), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(a_y, torch.full_like(a_y, a), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(mix[i][1], y)  # same draw for the same (seed, epoch, i)
    mix.set_epoch(1)
    assert not torch.equal(mix[0][1], first)  # a new draw every epoch
    none = _TemporalMix(base, nb=2, share=0.0, seed=3)
    assert torch.equal(none[2][1], base.y[2])


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_combine_time_weights_the_nearer_pair(backend):
    """Targets 1/3 and 2/3 of the way from t1 to t3: weights 2/3 and 1/3 of the forward net."""
    s = _scene(36, times=4, fine_times=[0, 3], chunks=16 if backend == "dask" else None)
    out = sttfn(s, fine="fine", coarse="coarse", epochs=0, arch_params=TINY, combine="time",
                diagnostics=True).compute()
    np.testing.assert_allclose(out.fine_weight.values[:, 0, 0], [2 / 3, 1 / 3], rtol=1e-6)
    ref = (2 / 3) * out.fine_forward[0] + (1 / 3) * out.fine_backward[0]
    np.testing.assert_allclose(out.fine.values[0], ref.values, atol=1e-4)
    ref = (1 / 3) * out.fine_forward[1] + (2 / 3) * out.fine_backward[1]
    np.testing.assert_allclose(out.fine.values[1], ref.values, atol=1e-4)
    assert json.loads(out.attrs["xfusion_sttfn"])["combine"] == "time"
    # no coarse_factor needed for "time", whatever stc_scale says
    sttfn(s.assign_attrs(coarse_factor=None), fine="fine", coarse="coarse", epochs=0,
          arch_params=TINY, combine="time", stc_scale="coarse")


def test_combine_stc_time_coarse_is_chunk_invariant():
    """STC residuals per coarse cell times the temporal distances, brute force = dask with
    chunks that are not multiples of the coarse cell."""
    kw = {"fine": "fine", "coarse": "coarse", "epochs": 0, "arch_params": TINY,
          "combine": "stc-time", "stc_scale": "coarse", "diagnostics": True}
    s = _scene(40, times=4, fine_times=[0, 3])
    a = sttfn(s, **kw)
    b = sttfn(_scene(40, times=4, fine_times=[0, 3], chunks=12), **kw).compute()
    xr.testing.assert_allclose(a.fine, b.fine, atol=1e-4)
    xr.testing.assert_allclose(a.fine_weight, b.fine_weight, atol=1e-5)
    for k, q in enumerate((2 / 3, 1 / 3)):
        ref = stc_weighting(a.fine_forward.values[k].astype(np.float64),
                            a.fine_backward.values[k].astype(np.float64),
                            s.coarse.values[k + 1].astype(np.float64), factor=16, prior=q)
        np.testing.assert_allclose(a.fine.values[k], ref, atol=1e-4)


def test_bad_combine_and_target_offset():
    s = _scene()
    with pytest.raises(InvalidParameterError, match=r"combine='nearest'.*'stc', 'time'"):
        sttfn(s, fine="fine", coarse="coarse", combine="nearest")
    with pytest.raises(InvalidParameterError, match="target_offset is a standard deviation"):
        sttfn(s, fine="fine", coarse="coarse", target_offset=-1.0)


def test_target_offset_shifts_target_coarse_and_fine_alike():
    from xfusion.training.sttfn import _TemporalMix

    base = _Items(6, seed=1)
    aug = _TemporalMix(base, nb=2, share=0.0, seed=5, offset_std=[1.0, 10.0])
    shifts = []
    for i in range(6):
        x, y = aug[i]
        torch.testing.assert_close(x[:4], base.x[i, :4])
        d_m, d_y = x[4:] - base.x[i, 4:], y - base.y[i]
        torch.testing.assert_close(d_m, d_y)
        for b in range(2):  # one uniform offset per band
            torch.testing.assert_close(d_y[b], torch.full_like(d_y[b], float(d_y[b, 0, 0])))
        shifts.append(d_y[:, 0, 0])
    s = torch.stack(shifts)
    assert float(s[:, 1].abs().mean()) > 3 * float(s[:, 0].abs().mean())  # per-band scale
    off = _TemporalMix(base, nb=2, share=0.0, seed=5, offset_std=[0.0, 0.0])
    assert torch.equal(off[3][0], base.x[3]) and torch.equal(off[3][1], base.y[3])
