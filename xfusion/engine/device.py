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

__all__ = [
    "KERNEL_THREADS_ENV",
    "KERNEL_THREADS_KEY",
    "autocast_context",
    "check_device",
    "cuda_available",
    "kernel_device",
    "kernel_threads",
    "resolve_device",
]

KERNEL_THREADS_KEY = "xfusion.kernel-threads"
"""Dask config key of the CPU threads the numba kernels may use in this process."""

KERNEL_THREADS_ENV = "XFUSION_KERNEL_THREADS"
"""Environment variable with the same meaning (read when the dask config key is not set)."""


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

def _positive_threads(value: Any, source: str) -> int:
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else 0
    except ValueError:
        n = 0
    if n < 1 or (isinstance(value, float) and not value.is_integer()):
        raise InvalidParameterError(
            f"{source} must be a positive integer number of threads; got {value!r}. Use e.g. "
            f"2, or leave it unset to use every CPU available to this process."
        )
    return n


def kernel_threads(threads: int | None = None, *, ntasks: int = 1) -> int:
    """Threads for one call of a numba kernel (STARFM's) when ``ntasks`` calls may run at once.

    The CPU budget is, in this order: ``threads`` when given; the dask config value
    ``"xfusion.kernel-threads"`` (:data:`KERNEL_THREADS_KEY`, e.g.
    ``dask.config.set({"xfusion.kernel-threads": 2})``, or the environment variable
    ``DASK_XFUSION__KERNEL_THREADS`` that dask reads at import); the environment variable
    ``XFUSION_KERNEL_THREADS`` (:data:`KERNEL_THREADS_ENV`); else the CPUs available to this
    process. The budget is shared by the tasks: ``max(1, budget // ntasks)`` each.

    Parameters
    ----------
    threads : int, optional
        The budget; ``None`` looks it up as above.
    ntasks : int, default 1
        Kernel calls that may run at the same time (the blocks of a dask graph).

    Returns
    -------
    int
        Threads per kernel call, at least 1.

    Raises
    ------
    InvalidParameterError
        When ``threads``, the config value or the environment variable is not a positive
        integer (the message names which).
    """
    if threads is not None:
        budget = _positive_threads(threads, "threads")
    else:
        import dask

        cfg = dask.config.get(KERNEL_THREADS_KEY, None)
        env = os.environ.get(KERNEL_THREADS_ENV, "").strip()
        if cfg is not None:
            budget = _positive_threads(cfg, f"The dask config value {KERNEL_THREADS_KEY!r}")
        elif env:
            budget = _positive_threads(env, f"The environment variable {KERNEL_THREADS_ENV}")
        else:
            try:
                budget = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                budget = os.cpu_count() or 1
    return max(1, budget // max(int(ntasks), 1))


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
