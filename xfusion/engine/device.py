"""Device and precision policy, resolved inside the worker that runs a task (never at import).

The one device resolver of xfusion: inference (the engine), training (:func:`xfusion.training.
fit` and the trainers) and STARFM's kernels (numba on the CPU, torch on CUDA) all resolve
``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` here, in the process that runs the work.
"""

from __future__ import annotations

import contextlib
import os
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

from xfusion._compat import has, lazy_import
from xfusion.config import check_device, check_precision
from xfusion.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["autocast_context", "check_device", "cuda_available", "kernel_device", "resolve_device"]


@cache
def cuda_available() -> bool:
    """True when this process can use CUDA through torch (without importing torch needlessly:
    no torch, or no NVIDIA driver, answers False without the import)."""
    if "torch" not in sys.modules:
        if not has("torch"):
            return False
        if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia")):
            return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def kernel_device(device: str, *, who: str = "this method") -> str | None:
    """The torch device of a method with a CPU (numba) kernel and a torch CUDA kernel.

    ``None`` means the CPU kernel: ``"cpu"``, or ``"auto"`` without CUDA. A ``"cuda"`` request
    in a process without CUDA is an error naming ``who``.
    """
    check_device(device)
    if device == "cpu":
        return None
    if device == "auto":
        return "cuda" if cuda_available() else None
    if device.startswith("cuda") and not cuda_available():
        raise InvalidParameterError(
            f"{who}(device={device!r}) but this worker has no CUDA device (or no torch with "
            "CUDA). Use device='auto' to fall back to the CPU kernel."
        )
    return device

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
