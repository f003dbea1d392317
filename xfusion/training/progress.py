"""Progress and control of training loops that do not run through :func:`xfusion.training.fit`.

:class:`TrainingProgress` reports each epoch or round of such a loop (STORI's boosted and
recurrent training) through the project's one progress mechanism, :class:`xfusion._progress.
Progress`: a ``tqdm.auto`` bar where someone watches (terminal, Jupyter) showing the loss, the
validation score and the ETA, otherwise progress lines (on the ``xfusion.progress`` logger when
logging shows INFO, else on stderr). The same switch silences it as everything else:
``progress=False`` on the call, :func:`xfusion.set_progress`, ``XFUSION_PROGRESS=0``.

:class:`TrainingInterrupted` is raised when the user interrupts training (Ctrl-C) before any
usable model exists; loops that have one keep the best model so far instead (and log a
warning on the ``xfusion.training`` logger). It is an :class:`~xfusion.errors.XFusionError` and
a :class:`KeyboardInterrupt`, so both the command line's interrupt handling and code waiting for
an interrupt see it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import Any

from xfusion._progress import Progress
from xfusion.errors import XFusionError

__all__ = ["TrainingInterrupted", "TrainingProgress", "interpreter_exiting"]

log = logging.getLogger("xfusion.training")


class TrainingInterrupted(XFusionError, KeyboardInterrupt):
    """Training was interrupted (Ctrl-C) before a usable model existed."""


def interpreter_exiting() -> bool:
    """True once the interpreter is shutting down (the main thread has finished its work).

    A training task running in a worker thread (a dask graph) polls this between rounds: when
    the user interrupts the computation (Ctrl-C), the main thread ends and the task stops
    instead of keeping the process alive until training completes. The thread pools are
    joined before the main thread is marked stopped, so the flag ``threading`` sets when its
    shutdown starts is read too (where this Python has it).
    """
    return bool(getattr(threading, "_SHUTTING_DOWN", False)) or (
        not threading.main_thread().is_alive())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


class TrainingProgress:
    """Report the progress of a training loop (see the module docstring).

    Parameters
    ----------
    total : int
        Planned epochs or rounds (the loop may stop earlier).
    desc : str
        Label, e.g. ``"stori"``.
    unit : str
        ``"epoch"`` or ``"round"``.
    progress : bool or None
        The call's switch (``None``: the session's, see :func:`xfusion.set_progress`).
    """

    def __init__(self, total: int, *, desc: str, unit: str, progress: bool | None) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self._bar = Progress(self.total, desc=desc, unit=unit, progress=progress, leave=False)

    @property
    def done(self) -> int:
        """Epochs or rounds recorded so far."""
        return self._bar.n

    def update(self, n: int = 1, **metrics: Any) -> None:
        """Record ``n`` more epochs/rounds and the latest ``metrics`` (shown with them)."""
        self._bar.set_postfix_str(", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()),
                                  refresh=False)
        self._bar.update(int(n))

    def close(self, status: str, summary: Mapping[str, Any] | None = None) -> None:
        """Close the report with the outcome (``status`` e.g. ``"early-stopping"``)."""
        parts = [self._bar.postfix] if self._bar.postfix else []
        parts += [f"{k}={_fmt(v)}" for k, v in (summary or {}).items()]
        self._bar.set_postfix_str(", ".join([*parts, f"({status})"]), refresh=False)
        self._bar.close()

    def interrupted(self, best: str | None) -> None:
        """Close on an interruption: ``best`` describes the model kept (None: none)."""
        self._bar.set_postfix_str("(interrupted)", refresh=False)
        self._bar.close()
        if best is not None:
            log.warning("%s: training interrupted after %d %ss; keeping the best model so "
                        "far (%s)", self.desc, self.done, self.unit, best)
