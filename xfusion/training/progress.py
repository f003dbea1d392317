"""Progress and control of training loops: a tqdm bar or log lines, and clean interruption.

:class:`TrainingProgress` reports each epoch or round of a training loop: a ``tqdm.auto`` bar
(terminal or Jupyter) showing the loss, the validation score and the ETA, or, when stderr is
not a terminal (batch jobs, logs), INFO lines on the ``xfusion.training`` logger (a child of
``xfusion``) every few seconds and at the end. ``progress=False`` silences both.

:class:`TrainingInterrupted` is raised when the user interrupts training (Ctrl-C) before any
usable model exists; loops that have one keep the best model so far instead (and log a
warning). It is an :class:`~xfusion.errors.XFusionError` and a :class:`KeyboardInterrupt`, so
both the command line's error handling and code waiting for an interrupt see it.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from xfusion.errors import XFusionError

__all__ = ["TrainingInterrupted", "TrainingProgress", "interpreter_exiting", "show_bar"]

log = logging.getLogger("xfusion.training")


class TrainingInterrupted(XFusionError, KeyboardInterrupt):
    """Training was interrupted (Ctrl-C) before a usable model existed."""


def _in_notebook() -> bool:
    ipy = sys.modules.get("IPython")
    if ipy is None:
        return False
    try:
        shell = ipy.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show_bar(progress: bool | None) -> bool:
    """Whether to draw a bar: ``progress`` when given, else stderr is a terminal or Jupyter."""
    if progress is not None:
        return bool(progress)
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except ValueError:  # closed stream
        tty = False
    return tty or _in_notebook()


def interpreter_exiting() -> bool:
    """True once the main thread has finished (the interpreter is shutting down).

    A training task running in a worker thread (a dask graph) polls this between rounds: when
    the user interrupts the computation, the main thread ends and the task stops instead of
    keeping the process alive until training completes.
    """
    return not threading.main_thread().is_alive()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


class TrainingProgress:
    """Report the progress of a training loop.

    Parameters
    ----------
    total : int
        Planned epochs or rounds (the loop may stop earlier).
    desc : str
        Label, e.g. ``"stori"``.
    unit : str
        ``"epoch"`` or ``"round"``.
    progress : bool or None
        ``True``: a bar; ``False``: nothing; ``None``: a bar on a terminal or in Jupyter,
        else INFO log lines on the ``xfusion.training`` logger.
    every : float
        Seconds between log lines (the first and the last are always written).
    """

    def __init__(self, total: int, *, desc: str, unit: str, progress: bool | None,
                 every: float = 10.0) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.every = float(every)
        self.done = 0
        self.t0 = time.perf_counter()
        self._last_log = -math.inf
        self._last: dict[str, Any] = {}
        self.bar = None
        self.logging = progress is None and not show_bar(None)
        if show_bar(progress):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False,
                            dynamic_ncols=True)
        if self.logging:
            log.info("%s: training, at most %d %ss", desc, self.total, unit)

    def update(self, n: int = 1, **metrics: Any) -> None:
        """Record ``n`` more epochs/rounds and the latest ``metrics`` (shown / logged)."""
        self.done += int(n)
        self._last = dict(metrics)
        if self.bar is not None:
            self.bar.update(int(n))
            self.bar.set_postfix({k: _fmt(v) for k, v in metrics.items()}, refresh=False)
        elif self.logging:
            now = time.perf_counter()
            if now - self._last_log >= self.every or self.done >= self.total:
                self._last_log = now
                self._log_line(now)

    def _log_line(self, now: float) -> None:
        el = now - self.t0
        rate = self.done / el if el > 0 else math.nan
        eta = (self.total - self.done) / rate if rate and math.isfinite(rate) else math.nan
        parts = " ".join(f"{k}={_fmt(v)}" for k, v in self._last.items())
        log.info("%s: %s %d/%d %s, %.1f s, ETA %s", self.desc, self.unit, self.done, self.total,
                 parts, el, f"{eta:.0f} s" if math.isfinite(eta) else "?")

    def close(self, status: str, summary: Mapping[str, Any] | None = None) -> None:
        """Close the bar; log the outcome (``status`` e.g. ``"early-stopping"``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.logging:
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in (summary or {}).items())
            log.info("%s: stopped (%s) after %d %ss in %.1f s %s", self.desc, status, self.done,
                     self.unit, time.perf_counter() - self.t0, extra)

    def interrupted(self, best: str | None) -> None:
        """Log the interruption: ``best`` describes the model kept (None: none)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if best is not None:
            log.warning("%s: training interrupted after %d %ss; keeping the best model so "
                        "far (%s)", self.desc, self.done, self.unit, best)
