"""``xfusion.cluster()``: a Dask cluster for the machine at hand (GPUs or CPUs), or a scheduler."""

from __future__ import annotations

import os
from typing import Any, Literal

from xfusion.errors import ClusterError, InvalidParameterError

__all__ = ["cluster", "gpu_count"]

KINDS = ("auto", "local", "cuda")


def gpu_count() -> int:
    """Number of CUDA GPUs usable by dask-cuda here (0 without dask-cuda, NVML or a GPU).

    Never raises: dask-cuda fails at import without the CUDA libraries and NVML raises
    without a driver; both mean "no GPU" for :func:`cluster`.
    """
    try:
        from dask_cuda.utils import get_n_gpus
    except Exception:
        return 0
    try:
        return int(get_n_gpus())
    except Exception:
        return 0


def _client_class() -> type:
    from distributed import Client

    class _OwningClient(Client):  # type: ignore[misc, valid-type]
        """A Client that also closes the cluster :func:`cluster` started for it."""

        _xfusion_cluster: Any = None

        def close(self, *args: Any, **kwargs: Any) -> Any:
            out = super().close(*args, **kwargs)
            owned, self._xfusion_cluster = self._xfusion_cluster, None
            if owned is not None:
                owned.close()
            return out

    return _OwningClient


def cluster(
    kind: Literal["auto", "local", "cuda"] | str = "auto",
    /,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = "auto",
    processes: bool = True,
    dashboard_address: str | None = ":0",
    set_as_default: bool = True,
    **kwargs: Any,
) -> Any:
    """Start (or connect to) a Dask cluster and return a ``distributed.Client`` for it.

    Parameters
    ----------
    kind : {"auto", "local", "cuda"} or str, default "auto"
        ``"cuda"``: a ``dask_cuda.LocalCUDACluster``, one worker per GPU with one thread each
        (each worker sees its own GPU as device 0, which is what xfusion's ``device="auto"``
        picks inside tasks). ``"local"``: a ``distributed.LocalCluster``. ``"auto"``: cuda
        when dask-cuda and a GPU are present, else local. Any other string is taken as the
        address of a running scheduler (``"tcp://10.0.0.5:8786"``) to connect to.
    n_workers, threads_per_worker, memory_limit, processes
        Local cluster layout. Defaults: one worker per GPU and one thread (cuda); on CPU,
        ``n_workers`` = the CPU count with one thread each (models and numba kernels then
        do not oversubscribe the cores).
    dashboard_address : str, optional
        Dashboard address (default ``":0"``: a free port, so several clusters can run side
        by side; ``client.dashboard_link`` gives it).
    set_as_default : bool, default True
        Make the client the default scheduler (what :func:`xfusion.run` and ``.compute()``
        use).
    **kwargs
        Passed to the cluster class (or to ``Client`` for an address).

    Returns
    -------
    distributed.Client
        Use it as a context manager, or call ``.close()``: the cluster started here is
        closed with it. An existing ``Client`` of yours works with xfusion as it is; this is
        only a convenience.

    Raises
    ------
    ClusterError
        ``kind="cuda"`` without dask-cuda (install ``xfusion[gpu]``) or without a GPU, or a
        scheduler address that cannot be reached.
    InvalidParameterError
        Bad worker counts.

    Examples
    --------
    >>> with xfusion.cluster() as client:  # doctest: +SKIP
    ...     report = xfusion.run("job.yaml")
    """
    for name, v in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise InvalidParameterError(f"{name} must be a positive int or None, found {v!r}.")
    if not isinstance(kind, str) or not kind:
        raise InvalidParameterError(
            f"kind must be one of {list(KINDS)} or a scheduler address, found {kind!r}."
        )
    Client = _client_class()
    if kind not in KINDS:
        if "://" not in kind and ":" not in kind:
            raise InvalidParameterError(
                f"kind={kind!r} is neither one of {list(KINDS)} nor a scheduler address like "
                "'tcp://host:8786'."
            )
        try:
            return Client(
                kind, set_as_default=set_as_default, timeout=kwargs.pop("timeout", 10), **kwargs
            )
        except OSError as err:
            raise ClusterError(
                f"Could not connect to the Dask scheduler at {kind!r}: {err}. Check that it "
                "runs and is reachable, or use kind='local'."
            ) from None
    gpus = gpu_count() if kind in ("auto", "cuda") else 0
    if kind == "cuda" and gpus == 0:
        try:
            import dask_cuda  # noqa: F401
        except Exception as err:
            raise ClusterError(
                f"kind='cuda' needs dask-cuda, which cannot be imported here ({err}). Install "
                "it with `pip install 'xfusion[gpu]'` (dask-cuda[cu12]), or use kind='local'."
            ) from None
        raise ClusterError(
            "kind='cuda' found no usable GPU (dask-cuda is installed but NVML reports no "
            "device). Check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use kind='local'."
        )
    if gpus:
        from dask_cuda import LocalCUDACluster

        if n_workers is not None:
            kwargs.setdefault(
                "CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(min(n_workers, gpus)))
            )
        cl = LocalCUDACluster(
            threads_per_worker=threads_per_worker or 1,
            memory_limit=memory_limit,
            dashboard_address=dashboard_address,
            **kwargs,
        )
    else:
        from distributed import LocalCluster

        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if n_workers is None:
            n_workers = max(1, (ncpu or 1) // (threads_per_worker or 1))
        cl = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker or 1,
            memory_limit=memory_limit,
            processes=processes,
            dashboard_address=dashboard_address,
            **kwargs,
        )
    try:
        client = Client(cl, set_as_default=set_as_default)
    except BaseException:
        cl.close()
        raise
    client._xfusion_cluster = cl
    return client
