"""PatchDataset/loader and fit(): masked loss, real training, determinism, resume, early stop."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from xfusion.errors import CheckpointError, InvalidParameterError, WeightsMismatchError
from xfusion.training import (
    PatchDataset,
    PatchSource,
    RandomPatchSampler,
    augment,
    channel_stats,
    fit,
    make_loader,
    masked_loss,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only add contention on a shared CI box
    yield
    torch.set_num_threads(n)


class Smooth(torch.nn.Module):
    """A learnable 3x3 conv (input 1 channel -> output 1 channel)."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(torch.nan_to_num(x))


def _problem(nan_target=False):
    """Target = 2 * input + 1 (a 3x3 conv can learn it exactly)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1, 48, 48)).astype("float32")
    y = 2 * x + 1
    if nan_target:
        y[:, :, :10] = np.nan
    src = PatchSource(np.concatenate([x, y], axis=1))
    patches = RandomPatchSampler(src, size=16, length=32, seed=0).patches
    return src, patches


def test_dataset_items_and_augmentation_are_consistent():
    src, patches = _problem()
    ds = PatchDataset(src, patches, inputs=[0], targets=[1], augment=True, seed=3)
    assert len(ds) == 32
    ks = set()
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 16, 16) and y.shape == (1, 16, 16) and x.dtype == torch.float32
        torch.testing.assert_close(y, 2 * x + 1)  # the same transform on input and target
        k = ds.transform_of(i)
        ks.add(k)
        raw = src.read(patches[i])[0]
        np.testing.assert_array_equal(x[0].numpy(), augment(raw, k))
    assert len(ks) > 4  # many of the 8 dihedral transforms are drawn
    ds.set_epoch(1)
    assert [ds.transform_of(i) for i in range(32)] != [PatchDataset(
        src, patches, inputs=[0], targets=[1], augment=True, seed=3).transform_of(i)
        for i in range(32)]


def test_augment_is_the_dihedral_group():
    a = np.arange(12.0).reshape(1, 3, 4)
    outs = {augment(a, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    np.testing.assert_array_equal(augment(a, 0), a)
    np.testing.assert_array_equal(augment(a, 2), a[:, ::-1, ::-1])
    np.testing.assert_array_equal(augment(a, 4), a[:, :, ::-1])


def test_targets_masked_where_inputs_missing():
    x = np.ones((1, 2, 8, 8), "float32")
    x[0, 0, 0, 0] = np.nan
    src = PatchSource(x)
    ds = PatchDataset(src, RandomPatchSampler(src, size=8, length=1).patches, inputs=[0],
                      targets=[1], nan_fill=0.0)
    xi, yi = ds[0]
    assert math.isnan(float(yi[0, 0, 0])) and float(xi[0, 0, 0]) == 0.0
    assert int(torch.isnan(yi).sum()) == 1


def test_loader_order_depends_only_on_seed_and_epoch_with_workers():
    src, patches = _problem()
    ds = PatchDataset(src, patches, inputs=[0], targets=[1], augment=True)
    a = [x for x, _ in make_loader(ds, batch_size=8, shuffle=True, seed=1, epoch=2)]
    b = [x for x, _ in make_loader(ds, batch_size=8, shuffle=True, seed=1, epoch=2,
                                   num_workers=2)]
    c = [x for x, _ in make_loader(ds, batch_size=8, shuffle=True, seed=1, epoch=3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_masked_loss_known_answer():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.0, float("nan")], [5.0, 4.0]]]])
    s, n = masked_loss(pred, target)
    assert float(n) == 3 and float(s) == 4.0  # (3 - 5)^2
    s, n = masked_loss(pred, target, kind="l1", scale=torch.tensor([2.0]))
    assert float(s) == 1.0
    with pytest.raises(InvalidParameterError, match="Unknown loss 'l3'"):
        masked_loss(pred, target, kind="l3")


def test_channel_stats_known_answer():
    rng = np.random.default_rng(1)
    data = rng.normal(300, 4, (1, 3, 20, 20)).astype("float32")
    data[0, 1, :5] = np.nan
    src = PatchSource(data)
    patches = RandomPatchSampler(src, size=20, length=1).patches
    st = channel_stats(src, patches, [[0, 1], [2]])
    pooled = np.concatenate([data[0, 0].ravel(), data[0, 1][np.isfinite(data[0, 1])]])
    np.testing.assert_allclose(st.mean[0], pooled.astype(np.float64).mean(), rtol=1e-12)
    np.testing.assert_allclose(st.std[0], pooled.astype(np.float64).std(), rtol=1e-9)
    assert st.count == (pooled.size, 400)


def test_fit_reduces_the_loss_and_excludes_nan_targets():
    src, patches = _problem(nan_target=True)
    ds = PatchDataset(src, patches, inputs=[0], targets=[1])
    model = Smooth()
    res = fit(model, ds, epochs=25, batch_size=8, lr=0.05, patience=None, progress=False,
              device="cpu")
    losses = [h["train_loss"] for h in res.history]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.02 * losses[0]
    assert res.best_epoch is not None and res.stopped == "completed"
    w = model.conv.weight.detach().numpy()[0, 0]
    assert abs(w[1, 1] - 2) < 0.2 and abs(float(model.conv.bias.detach()) - 1) < 0.2


def _fit(tmp_path=None, **kw):
    src, patches = _problem()
    train = PatchDataset(src, patches[:24], inputs=[0], targets=[1], augment=True, seed=4)
    val = PatchDataset(src, patches[24:], inputs=[0], targets=[1])
    model = Smooth(seed=2)
    opts = {"epochs": 6, "batch_size": 4, "lr": 0.02, "patience": None, "progress": False,
            "seed": 9, "device": "cpu"}
    opts.update(kw)
    res = fit(model, train, val=val, **opts)
    return model, res


def test_fit_is_deterministic_with_a_seed():
    m1, r1 = _fit()
    m2, r2 = _fit()
    m3, _ = _fit(seed=10)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    assert r1.history[-1]["val_loss"] == r2.history[-1]["val_loss"]
    assert not torch.equal(m1.conv.weight, m3.conv.weight)


def test_resume_gives_the_uninterrupted_result(tmp_path):
    full, r_full = _fit(patience=3)
    ck = tmp_path / "state.safetensors"
    _, r_part = _fit(checkpoint=ck, stop_after=2, patience=3)
    assert r_part.stopped == "interrupted" and r_part.epochs_run == 2
    src, patches = _problem()
    train = PatchDataset(src, patches[:24], inputs=[0], targets=[1], augment=True, seed=4)
    val = PatchDataset(src, patches[24:], inputs=[0], targets=[1])
    resumed = Smooth(seed=123)  # any init: the state comes from the checkpoint
    r_res = fit(resumed, train, val=val, epochs=6, batch_size=4, lr=0.02, patience=3,
                progress=False, seed=9, device="cpu", resume=ck)
    assert [h["val_loss"] for h in r_res.history] == [h["val_loss"] for h in r_full.history]
    assert r_res.best_epoch == r_full.best_epoch
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k])


def test_early_stopping_keeps_the_best_epoch():
    _, res = _fit(lr=1e-9, patience=2, min_delta=1.0)
    assert res.stopped == "early-stopping" and res.epochs_run == 3 and res.best_epoch == 0


def test_resume_rejects_model_checkpoints_and_other_models(tmp_path):
    model_ck = tmp_path / "model.safetensors"
    save_checkpoint(model_ck, {"net": Smooth()}, {"arch": "none"})
    src, patches = _problem()
    ds = PatchDataset(src, patches, inputs=[0], targets=[1])
    with pytest.raises(CheckpointError, match="not a training state"):
        fit(Smooth(), ds, epochs=1, resume=model_ck, progress=False, device="cpu")
    state = tmp_path / "state.safetensors"
    fit(Smooth(), ds, epochs=1, checkpoint=state, progress=False, device="cpu")
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 5, padding=2))
    with pytest.raises(WeightsMismatchError, match="does not fit this model"):
        fit(other, ds, epochs=2, resume=state, progress=False, device="cpu")


def test_fit_bad_arguments():
    src, patches = _problem()
    ds = PatchDataset(src, patches, inputs=[0], targets=[1])
    with pytest.raises(InvalidParameterError, match="epochs must be an integer >= 0"):
        fit(Smooth(), ds, epochs=-1, progress=False)
    with pytest.raises(InvalidParameterError, match="Unknown precision 'fp8'"):
        fit(Smooth(), ds, epochs=1, precision="fp8", progress=False)
    with pytest.raises(InvalidParameterError, match="Unknown device 'tpu'"):
        fit(Smooth(), ds, epochs=1, device="tpu", progress=False)


def test_keep_initial_never_returns_worse_weights():
    src, patches = _problem()
    train = PatchDataset(src, patches[:24], inputs=[0], targets=[1])
    val = PatchDataset(src, patches[24:], inputs=[0], targets=[1])
    model = Smooth(seed=2)
    with torch.no_grad():  # start next to the exact answer: lr=0.5 can only overshoot
        model.conv.weight.zero_()
        model.conv.weight[0, 0, 1, 1] = 2.0
        model.conv.bias.fill_(1.001)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, train, val=val, epochs=3, batch_size=4, lr=0.5, patience=None,
              keep_initial=True, progress=False, device="cpu")
    assert res.best_epoch == -1 and res.initial_loss < 1e-5
    assert all(h["val_loss"] > res.initial_loss for h in res.history)
    for k, v in start.items():
        assert torch.equal(model.state_dict()[k], v)
