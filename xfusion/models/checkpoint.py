"""Checkpoints: safetensors weights plus JSON metadata, loaded without ever unpickling.

One ``.safetensors`` file holds the tensors of one or more named nets (keys
``"<net>.<parameter>"``, e.g. ``"forward.head.weight"``) and, in the safetensors header, a
JSON document (key ``"xfusion"``) describing them: architecture and its parameters,
normalisation statistics, bands and units, halo, the training data, metrics and the xfusion
version. The same format stores training states for resuming :func:`xfusion.training.fit`
(``kind="train-state"``: model, best model and optimizer tensors, plus the loop's counters).

Integrity: the metadata records ``content_sha256``, a SHA-256 over the canonical metadata
JSON (without that field) and every tensor's name, dtype, shape and bytes. Loading recomputes
it, so an edited tensor or metadata field is reported as tampering; a truncated or garbled
file fails to parse and is reported as corrupt. Loading uses :mod:`safetensors` only: no
``torch.load``, no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xfusion._compat import lazy_import
from xfusion.errors import CheckpointError, WeightsMismatchError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "file_sha256",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

FORMAT = "xfusion-checkpoint"
"""Value of the ``format`` metadata field."""
FORMAT_VERSION = 1
"""Version of the checkpoint layout."""
_META_KEY = "xfusion"


def _version() -> str:
    from xfusion._version import __version__

    return __version__


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(meta: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _content_sha256(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    import torch

    h = hashlib.sha256(_canonical(meta))
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"\x00{key}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    """Turn tuples, numpy scalars/arrays and paths into JSON types (recursively)."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata and tensors (CPU)."""

    path: str | None
    """File it was read from."""
    metadata: dict[str, Any]
    """The JSON metadata."""
    tensors: dict[str, torch.Tensor]
    """All tensors by key."""

    @property
    def nets(self) -> list[str]:
        """Names of the nets stored (the key prefixes)."""
        return list(self.metadata.get("nets", []))

    def state_dict(self, net: str) -> dict[str, torch.Tensor]:
        """Tensors of ``net`` with the ``"<net>."`` prefix removed."""
        prefix = f"{net}."
        out = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if not out:
            raise CheckpointError(
                f"The checkpoint {self.path!r} holds no net named {net!r}; it holds "
                f"{self.nets!r}."
            )
        return out

    def build(self, net: str) -> torch.nn.Module:
        """Build ``net`` from the checkpoint's architecture and load its weights (eval mode)."""
        from xfusion.models.registry import build_model, get_architecture

        meta = self.metadata
        arch = meta.get("arch")
        try:
            get_architecture(arch)
        except Exception as err:
            raise WeightsMismatchError(
                f"The checkpoint {self.path!r} was made for architecture {arch!r}, which this "
                f"xfusion does not know ({err})"
            ) from None
        module = build_model(arch, int(meta.get("nbands", 1)), **meta.get("arch_params", {}))
        state = self.state_dict(net)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeightsMismatchError(
                f"The weights of net {net!r} in {self.path!r} do not fit architecture {arch!r} "
                f"with parameters {meta.get('arch_params')!r}: {str(err).splitlines()[0]} "
                "Re-save the checkpoint with xfusion, or pass the matching arch_params."
            ) from None
        return module.eval()


def save_checkpoint(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> str:
    """Write tensors and metadata to a ``.safetensors`` checkpoint; return the file's SHA-256.

    Parameters
    ----------
    path : path
        Output file (written atomically: a temporary file renamed into place).
    tensors : mapping
        ``{net_name: nn.Module or state_dict}`` (keys become ``"<net>.<param>"``) or, when
        ``metadata["kind"] == "train-state"``, a flat ``{key: tensor}`` mapping.
    metadata : mapping
        JSON-able description; ``format``, ``format_version``, ``xfusion_version``, ``nets``
        and ``content_sha256`` are filled in.
    """
    torch = lazy_import("torch", purpose="saving checkpoints")
    st = lazy_import("safetensors.torch", purpose="saving checkpoints", extra="torch")
    flat: dict[str, torch.Tensor] = {}
    nets: list[str] = []
    for key, value in tensors.items():
        if isinstance(value, torch.nn.Module):
            value = value.state_dict()
        if isinstance(value, Mapping):
            nets.append(str(key))
            for k, t in value.items():
                flat[f"{key}.{k}"] = t
        else:
            flat[str(key)] = value
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in flat.items()}
    meta: dict[str, Any] = _jsonable(dict(metadata))
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, xfusion_version=_version())
    meta.setdefault("kind", "model")
    if nets:
        meta["nets"] = nets
    meta["content_sha256"] = _content_sha256(meta, flat)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    st.save_file(flat, str(tmp), metadata={_META_KEY: json.dumps(meta, allow_nan=True)})
    os.replace(tmp, path)
    return file_sha256(path)


def _open_error(path: str, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"The weights file {path!r} is corrupt or not a safetensors file ({err}). Re-download "
        "or re-save it; xfusion only reads .safetensors checkpoints it wrote (never pickles)."
    )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON metadata of a checkpoint (header; tensors are not loaded or checked)."""
    safetensors = lazy_import("safetensors", purpose="reading checkpoints", extra="torch")
    path = str(path)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"Weights file {path!r} does not exist. Pass the path of a .safetensors checkpoint "
            "saved by xfusion."
        )
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except Exception as err:
        raise _open_error(path, err) from None
    raw = header.get(_META_KEY)
    if raw is None:
        raise CheckpointError(
            f"The file {path!r} is a safetensors file but not an xfusion checkpoint: its header "
            f"has no {_META_KEY!r} metadata (found keys {sorted(header)!r}). Save weights with "
            "xfusion (e.g. train_sttfn(..., out=...)) so that bands, units and normalisation "
            "travel with them."
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"The metadata of checkpoint {path!r} is not valid JSON ({err}); the file was "
            "modified or damaged. Re-save it with xfusion."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"The file {path!r} is not an xfusion checkpoint (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})."
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"The checkpoint {path!r} has format version {meta.get('format_version')!r}, newer "
            f"than this xfusion understands ({FORMAT_VERSION}). Upgrade xfusion."
        )
    return meta


def load_checkpoint(
    path: str | os.PathLike[str], *, expected_sha256: str | None = None
) -> Checkpoint:
    """Load and verify a checkpoint (never unpickles).

    Parameters
    ----------
    path : path
        The ``.safetensors`` file.
    expected_sha256 : str, optional
        SHA-256 the whole file must have (e.g. from the registry).

    Raises
    ------
    WeightsNotFoundError
        No such file.
    CheckpointError
        Unparseable (corrupt/truncated) file, not an xfusion checkpoint, wrong file hash,
        or contents that do not match the recorded ``content_sha256`` (tampered).
    """
    st = lazy_import("safetensors.torch", purpose="reading checkpoints", extra="torch")
    path = str(path)
    meta = read_metadata(path)
    if expected_sha256 is not None:
        got = file_sha256(path)
        if got != expected_sha256:
            raise CheckpointError(
                f"The weights file {path!r} has SHA-256 {got}, but {expected_sha256} was "
                "expected: it was modified or replaced. Restore the original file."
            )
    try:
        tensors = st.load_file(path)
    except Exception as err:
        raise _open_error(path, err) from None
    recorded = meta.get("content_sha256")
    actual = _content_sha256(meta, tensors)
    if recorded != actual:
        raise CheckpointError(
            f"The checkpoint {path!r} fails its integrity check: its tensors or metadata do not "
            f"match the recorded content_sha256 ({str(recorded)[:12]}... != {actual[:12]}...). "
            "The file was tampered with or damaged; re-save or re-download it."
        )
    return Checkpoint(path=path, metadata=meta, tensors=dict(tensors))


def build_from_checkpoint(path: str, net: str, sha256: str | None = None) -> torch.nn.Module:
    """Build sub-network ``net`` of an xfusion checkpoint (the engine's ModelSpec builder).

    Integrity (file hash when ``sha256`` is given, payload hash always) is verified; nothing
    is unpickled.
    """
    ckpt = load_checkpoint(path, expected_sha256=sha256)
    return ckpt.build(net)
