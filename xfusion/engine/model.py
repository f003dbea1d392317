"""Model identity for the engine: a small, picklable description loaded once per worker.

A :class:`ModelSpec` names a builder (an importable ``"package.module:function"`` or a
module-level callable) with its keyword arguments and, optionally, a safetensors weights file.
Tasks carry only the spec; each worker process builds the model once (per device) and caches
it, so the model itself is never serialized into the graph. An in-memory ``torch.nn.Module``
is also accepted by the engine: it becomes ONE graph node that every block task depends on,
so a distributed cluster ships it at most once per worker.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xfusion.errors import InvalidParameterError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = ["ModelSpec", "get_model", "module_token"]


def _freeze(kwargs: Mapping[str, Any] | tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    items = kwargs.items() if isinstance(kwargs, Mapping) else kwargs
    return tuple(sorted((str(k), v) for k, v in items))


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Description of a model the engine can build in any worker.

    Parameters
    ----------
    name : str
        Human-readable model name (used in graph keys, e.g. ``"sttfn-forward"``).
    builder : str or callable
        ``"package.module:function"`` or a module-level callable returning an ``nn.Module``.
    kwargs : mapping
        Keyword arguments for ``builder``.
    weights : str, optional
        Path to a ``.safetensors`` file loaded into the built module (never unpickled).
    halo : int
        Receptive-field radius of the model in input pixels.
    scale : int
        Output pixels per input pixel along each axis (super-resolution factor).
    out_channels : int
        Channels the model returns.
    """

    name: str
    builder: str | Callable[..., Any]
    kwargs: tuple[tuple[str, Any], ...] = field(default=())
    weights: str | None = None
    halo: int = 0
    scale: int = 1
    out_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", _freeze(self.kwargs))
        if self.weights is not None:
            object.__setattr__(self, "weights", str(Path(self.weights).expanduser().resolve()))
            if not Path(self.weights).is_file():
                raise WeightsNotFoundError(
                    f"Weights file {self.weights!r} for model {self.name!r} does not exist. "
                    "Pass the path of a .safetensors file saved by xfusion."
                )
        for attr in ("halo", "scale", "out_channels"):
            v = getattr(self, attr)
            if not isinstance(v, int) or v < (0 if attr == "halo" else 1):
                raise InvalidParameterError(f"ModelSpec.{attr} must be an integer >= "
                                            f"{0 if attr == 'halo' else 1}, found {v!r}.")

    @cached_property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights file (None without weights)."""
        return _file_sha256(self.weights) if self.weights else None

    @property
    def token(self) -> str:
        """Stable identity: name, builder, kwargs and weights hash."""
        from dask.base import tokenize

        builder = self.builder if isinstance(self.builder, str) else (
            f"{self.builder.__module__}:{self.builder.__qualname__}"
        )
        return tokenize(self.name, builder, self.kwargs, self.weights_sha256, self.halo,
                        self.scale, self.out_channels)

    def __dask_tokenize__(self) -> Any:
        return ("xfusion.ModelSpec", self.token)

    def build(self) -> torch.nn.Module:
        """Build the module on the CPU, load its weights, and put it in eval mode."""
        func = self.builder
        if isinstance(func, str):
            mod, _, attr = func.partition(":")
            try:
                func = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as err:
                raise InvalidParameterError(
                    f"Cannot import model builder {self.builder!r} ({err}). Use "
                    "'package.module:function' naming an importable function."
                ) from err
        module = func(**dict(self.kwargs))
        if self.weights:
            from safetensors.torch import load_file

            module.load_state_dict(load_file(self.weights))
        return module.eval()


_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def get_model(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    """Return the model for ``spec`` on ``device``, built once per process and cached."""
    key = (spec.token, str(device))
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = spec.build().to(device)
            _CACHE[key] = model
    return model


def module_token(module: torch.nn.Module) -> str:
    """Identity of an in-memory module: class, and a hash of its parameters and buffers."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
