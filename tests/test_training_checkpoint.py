"""Checkpoints: safetensors + JSON round trip, integrity (tampering, corruption), no unpickling."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from xfusion.errors import CheckpointError, WeightsMismatchError, WeightsNotFoundError
from xfusion.models import build_from_checkpoint, build_model
from xfusion.training import file_sha256, load_checkpoint, read_metadata, save_checkpoint

META = {"method": "sttfn", "arch": "xfusion-v1", "nbands": 1, "bands": ["fine"],
        "units": ["K"], "halo": 13, "normalization": {"mean": [290.0], "std": [5.0]},
        "arch_params": {"sr_width": 4, "feat": 4, "width": 4}, "metrics": {"rmse": 1.5}}


def _nets(seed=0):
    torch.manual_seed(seed)
    f = build_model("xfusion-v1", 1, sr_width=4, feat=4, width=4, init="default")
    b = build_model("xfusion-v1", 1, sr_width=4, feat=4, width=4, init="default")
    return f, b


def _save(tmp_path, name="w.safetensors"):
    f, b = _nets()
    path = tmp_path / name
    sha = save_checkpoint(path, {"forward": f, "backward": b}, META)
    return path, sha, f, b


def test_round_trip_weights_and_metadata(tmp_path):
    path, sha, f, b = _save(tmp_path)
    assert sha == file_sha256(path)
    ck = load_checkpoint(path, expected_sha256=sha)
    meta = ck.metadata
    assert meta["format"] == "xfusion-checkpoint" and meta["nets"] == ["forward", "backward"]
    assert meta["bands"] == ["fine"] and meta["units"] == ["K"] and meta["halo"] == 13
    assert meta["normalization"] == {"mean": [290.0], "std": [5.0]}
    assert meta["xfusion_version"] and len(meta["content_sha256"]) == 64
    assert read_metadata(path) == meta
    for name, net in (("forward", f), ("backward", b)):
        rebuilt = ck.build(name)
        for k, v in net.state_dict().items():
            torch.testing.assert_close(rebuilt.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 3, 20, 20) * 5 + 290
    with torch.no_grad():
        torch.testing.assert_close(build_from_checkpoint(str(path), "forward", sha)(x),
                                   f.eval()(x))


def _tensor_region(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, 8 + n


def test_tampered_tensor_bytes_are_detected(tmp_path):
    path, _, _, _ = _save(tmp_path)
    raw, start = _tensor_region(path)
    tampered = bytearray(raw)
    tampered[start + 100] ^= 0x40
    path.write_bytes(bytes(tampered))
    with pytest.raises(CheckpointError, match=r"fails its integrity check.*tampered"):
        load_checkpoint(path)


def test_edited_metadata_is_detected(tmp_path):
    path, _, _, _ = _save(tmp_path)
    raw, start = _tensor_region(path)
    header = raw[8:start].decode()
    edited = header.replace('\\"fine\\"', '\\"lst_\\"')  # same length: bands renamed
    assert edited != header
    path.write_bytes(raw[:8] + edited.encode() + raw[start:])
    assert read_metadata(path)["bands"] == ["lst_"]
    with pytest.raises(CheckpointError, match="integrity check"):
        load_checkpoint(path)


def test_truncated_or_garbage_files_are_corrupt(tmp_path):
    path, _, _, _ = _save(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_checkpoint(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        read_metadata(junk)


def test_wrong_file_hash_and_foreign_files(tmp_path):
    path, _, _, _ = _save(tmp_path)
    with pytest.raises(CheckpointError, match=r"has SHA-256 .* but 0+ was expected"):
        load_checkpoint(path, expected_sha256="0" * 64)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an xfusion checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_architecture_mismatch_on_build(tmp_path):
    f, b = _nets()
    meta = dict(META, arch_params={"sr_width": 8, "feat": 4, "width": 4})  # says 8, has 4
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, {"forward": f, "backward": b}, meta)
    with pytest.raises(WeightsMismatchError, match="do not fit architecture 'xfusion-v1'"):
        load_checkpoint(path).build("forward")
    with pytest.raises(CheckpointError, match="holds no net named 'sideways'"):
        load_checkpoint(path).state_dict("sideways")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path, sha, _, _ = _save(tmp_path)

    def boom(*a, **k):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    ck = load_checkpoint(path, expected_sha256=sha)
    assert ck.build("backward") is not None


def test_metadata_is_plain_json_in_the_header(tmp_path):
    path, _, _, _ = _save(tmp_path)
    raw, start = _tensor_region(path)
    header = json.loads(raw[8:start])
    meta = json.loads(header["__metadata__"]["xfusion"])
    assert meta["metrics"] == {"rmse": 1.5}
    assert np.isclose(meta["normalization"]["std"][0], 5.0)
