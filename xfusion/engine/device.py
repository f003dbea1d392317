"""Device and precision policy, resolved inside the worker that runs a task (never at import)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from xfusion._compat import lazy_import
from xfusion.config import check_device, check_precision
from xfusion.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["autocast_context", "check_device", "resolve_device"]

def resolve_device(device: str = "auto") -> torch.device:
    """Resolve ``device`` to a ``torch.device`` in the current process.

    ``"auto"`` gives ``cuda`` when this process (e.g. a dask-cuda worker, which always sees its
    own GPU as device 0) has CUDA, else ``cpu``.
    """
    torch = lazy_import("torch", purpose="running a torch model through the engine")
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"device={device!r} was requested but this worker has no CUDA device. "
            "Use device='auto' to fall back to the CPU."
        )
    return torch.device(device)


def autocast_context(dev: torch.device, precision: str) -> Any:
    """Autocast context for ``precision`` on CUDA; a no-op elsewhere."""
    check_precision(precision)
    if dev.type != "cuda" or precision == "float32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
