"""The model registry and STTFN's "xfusion-v1" and "xfusion-v2" nets: size, receptive field,
known answers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xfusion.models
from xfusion.errors import InvalidParameterError, WeightsNotFoundError
from xfusion.models import (
    Architecture,
    KnownWeights,
    get_architecture,
    list_architectures,
    list_weights,
    register_weights,
    resolve_weights,
)


def test_registry_lists_xfusion_v1_without_torch():
    names = [a.name for a in list_architectures(method="sttfn")]
    assert names == ["xfusion-v1", "xfusion-v2"]
    arch = get_architecture("xfusion-v1")
    assert isinstance(arch, Architecture) and not arch.verified
    assert arch.defaults["sr_kernels"] == (9, 1, 5)
    code = ("import sys, xfusion.models, xfusion.training, xfusion.methods.sttfn; "
            "print([a.name for a in xfusion.models.list_architectures(method='sttfn')], "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['xfusion-v1', 'xfusion-v2'] False"
    v2 = get_architecture("xfusion-v2")
    assert not v2.verified and v2.defaults["guess"] == "gain" and v2.defaults["ctx_box"] == 65


def test_unknown_architecture_and_weights():
    with pytest.raises(InvalidParameterError, match=r"Unknown architecture 'v9'\. Registered "
                       r"architectures: \[.*'xfusion-v1'.*\]"):
        get_architecture("v9")
    with pytest.raises(WeightsNotFoundError, match="neither a file nor a registered name"):
        resolve_weights("no-such-weights")
    with pytest.raises(InvalidParameterError, match="unknown architecture 'v9'"):
        register_weights(KnownWeights(name="x", path="/x", sha256=None, arch="v9"))


def test_registered_weights_resolve(tmp_path, monkeypatch):
    from xfusion.models import registry

    monkeypatch.setattr(registry, "_WEIGHTS", {})
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    register_weights(KnownWeights(name="demo", path=str(f), sha256="ab", arch="xfusion-v1"))
    assert [w.name for w in list_weights("xfusion-v1")] == ["demo"]
    assert resolve_weights("demo") == (str(f), "ab")
    assert resolve_weights(str(f))[0] == str(f.resolve())


torch = pytest.importorskip("torch")

V2_PARAMS = 109_426


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_default_size_and_receptive_field():
    net = xfusion.models.build_model("xfusion-v1", 1)
    assert sum(p.numel() for p in net.parameters()) == 405_025
    assert net.halo == 13 and net.out_channels == 1 and net.scale == 1
    six = xfusion.models.build_model("xfusion-v1", 6, sr_width=8, feat=4, width=8)
    assert six.out_channels == 6 and six.halo == 13
    with pytest.raises(InvalidParameterError, match=r"Unknown parameter\(s\) \['depth'\]"):
        xfusion.models.build_model("xfusion-v1", 1, depth=3)


def test_receptive_field_is_the_declared_halo():
    torch.manual_seed(0)
    net = xfusion.models.build_model("xfusion-v1", 1, sr_width=4, feat=4, width=4,
                                     init="default").eval()
    x = torch.randn(1, 3, 41, 41)
    x2 = x.clone()
    x2[0, :, 20, 20] += 10.0
    with torch.no_grad():
        d = (net(x2) - net(x)).abs()[0, 0]
    rows, cols = np.nonzero(d.numpy() > 0)
    reach = max(np.abs(rows - 20).max(), np.abs(cols - 20).max())
    assert reach == net.halo  # the declared halo is exactly the receptive-field radius


def test_zero_head_returns_fine_plus_coarse_change_exactly():
    net = xfusion.models.build_model("xfusion-v1", 2, sr_width=4, feat=4, width=4,
                                     mean=[290.0, 0.3], std=[4.0, 0.05]).eval()
    g = torch.Generator().manual_seed(1)
    l_ref = 290 + 4 * torch.randn(3, 2, 16, 16, generator=g)
    m_ref = 291 + torch.randn(3, 2, 16, 16, generator=g)
    m_tgt = 295 + torch.randn(3, 2, 16, 16, generator=g)
    with torch.no_grad():
        out = net(torch.cat([l_ref, m_ref, m_tgt], dim=1))
    torch.testing.assert_close(out, l_ref + m_tgt - m_ref, rtol=0, atol=2e-4)


def test_nan_inputs_give_finite_outputs_and_normalisation_round_trips():
    net = xfusion.models.build_model("xfusion-v1", 1, sr_width=4, feat=4, width=4,
                                     init="default").eval()
    net.set_normalization([300.0], [5.0])
    assert net.mean.tolist() == [300.0] and net.std.tolist() == [5.0]
    x = 300 + torch.randn(1, 3, 24, 24)
    x[0, 0, 3:6, 3:6] = float("nan")
    with torch.no_grad():
        assert torch.isfinite(net(x)).all()
    assert {"mean", "std"} <= set(net.state_dict())


# --------------------------------------------------------------------------------------------
# xfusion-v2: coarse-context branch, smoothed coarse change, per-pixel gain and offset


def _reach(net, size, draws=3):
    """Largest distance at which an output changes when one input pixel (each channel) does,
    over a few random inputs (one draw can leave the outermost path behind a zero ReLU), in
    float64 (the far effects of a 65 px box mean are below float32's resolution at 300 K)."""
    g = torch.Generator().manual_seed(0)
    c = size // 2
    reach = 0
    net = net.double()
    for _ in range(draws):
        x = 300 + torch.randn(1, 3, size, size, generator=g, dtype=torch.float64)
        x2 = x.clone()
        x2[0, :, c, c] += torch.tensor([10.0, 5.0, 7.0], dtype=x.dtype)  # the change moves too
        with torch.no_grad():
            d = (net(x2) - net(x)).abs()[0, 0]
        rows, cols = np.nonzero(d.numpy() > 0)
        reach = max(reach, np.abs(rows - c).max(), np.abs(cols - c).max())
    return reach


def test_v2_default_size_and_receptive_field():
    net = xfusion.models.build_model("xfusion-v2", 1)
    assert sum(p.numel() for p in net.parameters()) == V2_PARAMS
    assert net.halo == 95 and net.out_channels == 1 and net.scale == 1
    # box 65 (radius 32) + dilations 8 + 16 + 32, then two blocks of 7x7 and a 3x3 head
    assert net.halo == 32 + 56 + 2 * 3 + 1
    with pytest.raises(InvalidParameterError, match=r"Unknown parameter\(s\) \['depth'\]"):
        xfusion.models.build_model("xfusion-v2", 1, depth=3)


@pytest.mark.parametrize("params", [
    {},  # the defaults (widths shrunk below to keep the test fast)
    {"ctx_box": 9, "ctx_dilations": [2, 3]},
    {"ctx_width": 0, "ctx_dilations": [], "guess": "smooth-change", "ctx_box": 61},  # box only
    {"guess": "change", "target_features": True, "ctx_box": 5, "ctx_dilations": [4]},
])
def test_v2_receptive_field_is_the_declared_halo(params):
    torch.manual_seed(0)
    net = xfusion.models.build_model("xfusion-v2", 1, sr_width=8, feat=8, width=8,
                                     **{"ctx_width": 8, **params}, init="default",
                                     mean=[300.0], std=[1.0]).eval()
    assert _reach(net, 2 * net.halo + 9) == net.halo


def _box_mean(a, k):
    """Brute-force mean of the finite values in the k x k box around each pixel."""
    h, w = a.shape
    out = np.zeros_like(a)
    for i in range(h):
        for j in range(w):
            v = a[max(i - k // 2, 0):i + k // 2 + 1, max(j - k // 2, 0):j + k // 2 + 1]
            out[i, j] = np.nanmean(v)
    return out


def test_v2_untrained_returns_fine_plus_smoothed_coarse_change():
    net = xfusion.models.build_model("xfusion-v2", 1, sr_width=4, feat=4, width=4,
                                     ctx_width=4, ctx_box=5, mean=[290.0], std=[4.0]).eval()
    g = torch.Generator().manual_seed(1)
    l_ref = 290 + 4 * torch.randn(1, 1, 13, 11, generator=g, dtype=torch.float64)
    m_ref = 291 + torch.randn(1, 1, 13, 11, generator=g, dtype=torch.float64)
    m_tgt = 295 + torch.randn(1, 1, 13, 11, generator=g, dtype=torch.float64)
    m_tgt[0, 0, 2:5, 3:6] = float("nan")  # a coarse gap: left out of the box means
    with torch.no_grad():
        out = net.double()(torch.cat([l_ref, m_ref, m_tgt], dim=1))[0, 0].numpy()
    change = (m_tgt - m_ref)[0, 0].numpy()
    ref = l_ref[0, 0].numpy() + _box_mean(change, 5)
    finite = np.isfinite(change)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=0, atol=1e-6)
    assert np.isfinite(out).all()


def test_v2_output_is_affine_in_the_target_coarse_image():
    """Gain mode without target features: the target enters only through the smoothed change,
    so a prediction is exactly linear along M_ref + a (M_tgt - M_ref)."""
    torch.manual_seed(0)
    net = xfusion.models.build_model("xfusion-v2", 1, sr_width=4, feat=4, width=4,
                                     ctx_width=4, ctx_box=5, ctx_dilations=[2],
                                     init="default").eval().double()
    x = 290 + 3 * torch.randn(1, 3, 20, 20, dtype=torch.float64)
    outs = []
    for a in (0.0, 0.5, 1.0):
        xa = x.clone()
        xa[:, 2] = x[:, 1] + a * (x[:, 2] - x[:, 1])
        with torch.no_grad():
            outs.append(net(xa))
    torch.testing.assert_close(outs[1], (outs[0] + outs[2]) / 2, rtol=0, atol=1e-9)
    assert not torch.allclose(outs[0], outs[2])
