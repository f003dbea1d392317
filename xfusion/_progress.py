"""Progress of long work: one switch, a tqdm.auto bar where someone watches, log lines elsewhere.

Every loop that can take more than a few seconds (training epochs, tiles, writes) reports
through :class:`Progress`; dask computations through :func:`dask_progress`.

- Where a person watches (a terminal on stderr, or a Jupyter kernel) they get a
  ``tqdm.auto`` bar: a widget in Jupyter, a text bar in a terminal.
- Elsewhere (batch jobs, CI, ``2> log``) they get a line every ``XFUSION_PROGRESS_INTERVAL``
  seconds (default 10) and one at the end, through the ``xfusion.progress`` logger when
  logging is configured, else on stderr.
- One switch silences (or forces) all of it: ``progress=False`` on a call, or for a whole
  session ``XFUSION_PROGRESS=0`` in the environment, ``dask.config.set({"xfusion.progress":
  False})`` or :func:`set_progress`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Progress", "dask_progress", "emit", "enabled", "interactive", "set_progress"]

log = logging.getLogger("xfusion.progress")

_ENV = "XFUSION_PROGRESS"
_CONFIG_KEY = "xfusion.progress"
_OFF = {"0", "false", "no", "off", "none", "quiet"}
_ON = {"1", "true", "yes", "on"}
_session: bool | None = None


def set_progress(on: bool | None) -> None:
    """Switch progress reports on (True), off (False) or back to the default (None) for the
    rest of the session; a call's own ``progress=`` still wins."""
    global _session
    _session = None if on is None else bool(on)


def enabled(progress: bool | None = None) -> bool:
    """Whether to report progress: the call's ``progress`` when given, else the session
    switch (:func:`set_progress`), the dask config key ``xfusion.progress``, the environment
    variable ``XFUSION_PROGRESS``; on by default."""
    if progress is not None:
        return bool(progress)
    if _session is not None:
        return _session
    try:
        import dask

        value = dask.config.get(_CONFIG_KEY, None)
    except ImportError:  # pragma: no cover - dask is a dependency
        value = None
    if value is not None:
        return str(value).strip().lower() not in _OFF if isinstance(value, str) else bool(value)
    env = os.environ.get(_ENV)
    return env is None or env.strip().lower() not in _OFF


def interactive() -> bool:
    """True in a Jupyter kernel or when stderr is a terminal (someone watches a bar)."""
    env = os.environ.get(_ENV, "").strip().lower()
    if env == "bar":
        return True
    if env == "log":
        return False
    if "ipykernel" in sys.modules:
        try:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None and getattr(shell, "kernel", None) is not None:
                return True
        except ImportError:  # pragma: no cover
            pass
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("XFUSION_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def emit(line: str, logger: logging.Logger | None = None) -> None:
    """Write a progress line: through ``logger`` (default ``xfusion.progress``) when logging
    is configured to show its INFO lines, else on stderr."""
    lg = logger or log
    if lg.hasHandlers() and lg.isEnabledFor(logging.INFO):
        lg.info(line)
    else:  # logging not configured for INFO lines: stderr, where a bar would have been
        print(line, file=sys.stderr, flush=True)


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A progress report over ``total`` steps (a ``tqdm``-like object: ``update``, ``close``,
    ``set_postfix_str``, a context manager).

    Parameters
    ----------
    total : int or None
        Number of steps (None: unknown).
    desc : str
        What is running (``"sttfn forward"``, ``"xfusion.write_tiled"``).
    unit : str
        Name of a step (``"epoch"``, ``"tile"``).
    initial : int
        Steps already done (a resumed run).
    progress : bool, optional
        The call's switch (see :func:`enabled`).
    leave : bool
        Keep the bar when done (tqdm's ``leave``).
    lines : bool
        Write log lines where no bar is shown (False: the caller writes its own).
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "it", initial: int = 0,
                 progress: bool | None = None, leave: bool = True, lines: bool = True) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self.postfix = ""
        self._bar: Any = None
        self._on = enabled(progress)
        self._t0 = time.monotonic()
        self._last = self._t0
        self._closed = False
        if not self._on:
            return
        if interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
        elif lines:
            self._line("started")
        else:
            self._on = False

    # tqdm-like API -----------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._on and time.monotonic() - self._last >= _interval():
            self._line()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s
        if self._bar is not None:
            self._bar.set_postfix_str(s, refresh=refresh)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._on:
            self._line("done" if self.total is None or self.n >= self.total else "stopped")

    def __enter__(self) -> Progress:  # noqa: PYI034 - a final class in use
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # log lines ---------------------------------------------------------------------------
    def _line(self, state: str = "") -> None:
        now = time.monotonic()
        self._last = now
        elapsed = now - self._t0
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({100.0 * self.n / self.total:.0f} %)" if self.total else ""
        eta = ""
        if self.total and 0 < self.n < self.total and not state:
            eta = f", about {_fmt_s(elapsed / self.n * (self.total - self.n))} left"
        extra = f", {self.postfix}" if self.postfix else ""
        tag = f" {state}" if state else ""
        emit(f"{self.desc}:{tag} {self.n}{of} {self.unit}{pct} in {_fmt_s(elapsed)}"
              f"{eta}{extra}")


@contextmanager
def dask_progress(desc: str, progress: bool | None = None) -> Iterator[None]:
    """Report the progress of the dask computations in the block (local schedulers): a
    ``tqdm.auto`` bar where someone watches, else log lines (tasks done of the total)."""
    if not enabled(progress):
        yield
        return
    if interactive():
        from tqdm.auto import tqdm
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=desc, tqdm_class=tqdm):
            yield
        return
    from dask.callbacks import Callback

    state: dict[str, Any] = {}

    class _Lines(Callback):  # type: ignore[misc]
        def _start_state(self, dsk: Any, st: dict[str, Any]) -> None:
            total = sum(len(st[k]) for k in ("ready", "waiting", "running", "finished")
                        if k in st)
            state["bar"] = Progress(total, desc=desc, unit="task", progress=True)

        def _posttask(self, key: Any, result: Any, dsk: Any, st: dict[str, Any],
                      worker_id: Any) -> None:
            bar = state.get("bar")
            if bar is not None:
                bar.update(1)

        def _finish(self, dsk: Any, st: dict[str, Any], errored: bool) -> None:
            bar = state.pop("bar", None)
            if bar is not None:
                if not errored and bar.total is not None:
                    bar.n = max(bar.n, bar.total)
                bar.close()

    with _Lines():
        yield
