"""``fit()``: the training loop shared by xfusion's learned methods.

Adam, masked losses (NaN targets excluded), validation on a separate (spatially held-out)
dataset, early stopping with best-weights restore, bf16/fp16 autocast on CUDA, a progress
bar, determinism from a seed, and resumable training states saved as safetensors + JSON
(:mod:`xfusion.models.checkpoint`; never pickled).

Determinism: the batch order of epoch ``e`` depends only on ``(seed, e)``, and datasets with
``set_epoch`` (e.g. :class:`~xfusion.training.PatchDataset`) draw augmentations from
``(seed, e, index)``; with the optimizer state restored, a run resumed from a checkpoint
therefore continues exactly as the uninterrupted run would (on the same device and library
versions).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from xfusion.config import check_precision
from xfusion.engine.device import resolve_device
from xfusion.errors import CheckpointError, InvalidParameterError, WeightsMismatchError
from xfusion.models.checkpoint import load_checkpoint, save_checkpoint
from xfusion.training.datasets import make_loader

__all__ = ["LOSSES", "FitResult", "fit", "masked_loss"]

LOSSES: tuple[str, ...] = ("mse", "l1", "huber")
"""Loss names accepted by :func:`fit`."""


@dataclass
class FitResult:
    """What :func:`fit` did."""

    history: list[dict[str, float]] = field(default_factory=list)
    """One record per epoch: ``epoch``, ``train_loss``, ``val_loss`` (NaN without
    validation), ``seconds``."""
    best_epoch: int | None = None
    """Epoch (0-based) whose weights were kept; -1: the initial weights (``keep_initial``)."""
    initial_loss: float = math.nan
    """Monitored loss of the initial weights (``keep_initial``; NaN otherwise)."""
    best_loss: float = math.inf
    """Monitored loss at ``best_epoch`` (validation loss, else training loss)."""
    epochs_run: int = 0
    """Epochs completed (including those before a resume)."""
    stopped: str = "completed"
    """``"completed"``, ``"early-stopping"``, ``"time-budget"``, ``"interrupted"``
    (``stop_after``) or ``"no-epochs"`` (nothing left to train)."""
    seconds: float = 0.0
    """Wall time of this call."""
    device: str = "cpu"
    """Device used."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return asdict(self)


def masked_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str = "mse",
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the per-pixel loss over finite targets, and their count.

    ``scale`` (one value per channel) divides the errors first, e.g. the normalisation std,
    so that bands in different units weigh alike. Returns ``(sum, count)`` as float32
    tensors; the mean loss is ``sum / count``.
    """
    pred = pred.float()
    target = target.float()
    mask = torch.isfinite(target) & torch.isfinite(pred)
    err = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros((), device=pred.device))
    if scale is not None:
        err = err / scale.view(1, -1, 1, 1).to(err)
    if kind == "mse":
        per = err * err
    elif kind == "l1":
        per = err.abs()
    elif kind == "huber":
        a = err.abs()
        per = torch.where(a < 1.0, 0.5 * err * err, a - 0.5)
    else:
        raise InvalidParameterError(f"Unknown loss {kind!r}. Choose one of {list(LOSSES)!r}.")
    per = torch.where(mask, per, torch.zeros((), device=pred.device))
    return per.sum(), mask.sum().float()


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                       meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        raise WeightsMismatchError(
            f"The training state {path!r} does not fit this model: "
            f"{str(err).splitlines()[0]} Resume with the same architecture and parameters."
        ) from None


def fit(
    model: torch.nn.Module,
    train: torch.utils.data.Dataset,
    *,
    val: torch.utils.data.Dataset | None = None,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    loss: str = "mse",
    loss_scale: Any = None,
    patience: int | None = 10,
    min_delta: float = 0.0,
    restore_best: bool = True,
    keep_initial: bool = False,
    seed: int = 0,
    device: str = "auto",
    precision: str = "float32",
    num_workers: int = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: str | os.PathLike[str] | None = None,
    time_budget: float | None = None,
    stop_after: int | None = None,
    description: str = "fit",
    callback: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` with Adam and a masked loss.

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch of inputs ``(N, C_in, H, W)`` to predictions ``(N, C_out, H, W)``.
        Trained in place; on return it holds the best weights (``restore_best``), on the CPU,
        in eval mode.
    train : torch.utils.data.Dataset
        Yields ``(x, y)`` tensor pairs; NaN in ``y`` marks pixels excluded from the loss.
    val : torch.utils.data.Dataset, optional
        Validation data (held out in space, e.g. with
        :func:`xfusion.training.spatial_split`); monitored for early stopping. Without it the
        training loss is monitored.
    epochs : int
        Total epochs (a resumed run continues up to this number).
    batch_size : int
        Items per optimizer step.
    lr, weight_decay : float
        Adam learning rate and (L2) weight decay.
    loss : {"mse", "l1", "huber"}
        Per-pixel loss, averaged over the finite targets of each batch.
    loss_scale : sequence of float or tensor, optional
        Per-output-channel divisor of the errors (e.g. the normalisation std).
    patience : int, optional
        Stop after this many epochs without improvement of the monitored loss by more than
        ``min_delta`` (``None``: never stop early).
    restore_best : bool
        Load the best epoch's weights at the end.
    keep_initial : bool
        Evaluate the monitored loss before training and count the initial weights as a
        candidate for the best (``best_epoch == -1`` when no epoch beats them): for models
        initialised at a good baseline, training can then only improve on it.
    seed : int
        Seed of the batch order, augmentations and torch's global RNG.
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Where to train (``"auto"``: CUDA when available).
    precision : {"float32", "bf16", "fp16"}
        Autocast precision on CUDA (fp16 uses a gradient scaler); the CPU trains in float32.
    num_workers : int
        DataLoader worker processes.
    progress : bool, optional
        Report progress per epoch (None: the session switch, see :func:`xfusion.set_progress`):
        a ``tqdm.auto`` bar in Jupyter and terminals, progress lines elsewhere.
    checkpoint : path, optional
        Save the training state here (safetensors + JSON) every ``checkpoint_every`` epochs
        and at the end.
    resume : path, optional
        Continue from a training state saved by ``checkpoint=``.
    time_budget : float, optional
        Stop after the epoch during which this many seconds have passed.
    stop_after : int, optional
        Stop after this many epochs in THIS call (simulates an interruption; the state is
        checkpointed so a later ``resume=`` continues).
    description : str
        Label of the progress bar.
    callback : callable, optional
        Called with each epoch's record.

    Returns
    -------
    FitResult

    Raises
    ------
    InvalidParameterError
        Bad arguments (unknown loss, device, precision, non-positive epochs/batch size...).
    CheckpointError, WeightsMismatchError
        ``resume=`` names a file that is not a training state, is corrupt or tampered with,
        or does not fit ``model``.
    """
    from xfusion._progress import Progress

    if loss not in LOSSES:
        raise InvalidParameterError(f"Unknown loss {loss!r}. Choose one of {list(LOSSES)!r}.")
    for name, v, lo in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                        ("checkpoint_every", checkpoint_every, 1)):  # fmt: skip
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise InvalidParameterError(f"fit(): {name} must be an integer >= {lo}, found {v!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise InvalidParameterError(f"fit(): lr must be a finite number > 0, found {lr!r}.")
    check_precision(precision)
    dev = resolve_device(device)
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    use_amp = dev.type == "cuda" and precision != "float32"
    amp_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and precision == "fp16" else None
    scale_t = None if loss_scale is None else torch.as_tensor(loss_scale, dtype=torch.float32,
                                                              device=dev)

    result = FitResult(device=str(dev))
    best_state: dict[str, torch.Tensor] | None = None
    bad = 0
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume)
        meta = ckpt.metadata
        if meta.get("kind") != "train-state":
            raise CheckpointError(
                f"resume={os.fspath(resume)!r} is a {meta.get('kind', 'model')!r} checkpoint, not "
                "a training state. Resume from the file given to fit(checkpoint=...)."
            )
        _load_state(model, _strip(ckpt.tensors, "model."), str(resume))
        best = _strip(ckpt.tensors, "best.")
        best_state = {k: v.to(dev) for k, v in best.items()} if best else None
        model.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        _restore_optimizer(opt, {k: v.to(dev) for k, v in ckpt.tensors.items()}, meta["optimizer"])
        loop = meta["loop"]
        start_epoch = int(loop["epoch"]) + 1
        bad = int(loop["bad_epochs"])
        result.history = list(loop["history"])
        result.best_epoch = loop["best_epoch"]
        result.best_loss = float(loop["best_loss"])
        result.epochs_run = start_epoch
        if scaler is not None and loop.get("scaler"):
            scaler.load_state_dict(loop["scaler"])

    def save_state(epoch: int) -> None:
        if checkpoint is None:
            return
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        otensors, ometa = _flatten_optimizer(opt)
        tensors.update(otensors)
        meta = {
            "kind": "train-state",
            "optimizer": ometa,
            "loop": {
                "epoch": epoch, "bad_epochs": bad, "history": result.history,
                "best_epoch": result.best_epoch, "best_loss": result.best_loss,
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            "fit": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss,
                    "seed": seed, "precision": precision, "patience": patience},
        }  # fmt: skip
        save_checkpoint(checkpoint, tensors, meta)

    def run_epoch(ds: torch.utils.data.Dataset, epoch: int, training: bool) -> float:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        loader = make_loader(ds, batch_size=batch_size, shuffle=training, seed=seed,
                             epoch=epoch, num_workers=num_workers)
        model.train(training)
        tot = torch.zeros((), dtype=torch.float64, device=dev)
        cnt = torch.zeros((), dtype=torch.float64, device=dev)
        for x, y in loader:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with torch.set_grad_enabled(training), torch.autocast(
                device_type=dev.type, dtype=amp_dtype, enabled=use_amp
            ):
                pred = model(x)
            s, n = masked_loss(pred, y, kind=loss, scale=scale_t)
            if training and n.item() > 0:
                batch_loss = s / n
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(batch_loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    batch_loss.backward()
                    opt.step()
            tot += s.detach().double()
            cnt += n.detach().double()
        return float(tot / cnt) if cnt.item() > 0 else math.nan

    if len(train) == 0:
        raise InvalidParameterError("fit(): the training dataset is empty.")
    if keep_initial and resume is None and start_epoch < epochs:
        with torch.no_grad():
            has_val = val is not None and len(val) > 0
            initial = run_epoch(val if has_val else train, 0, False)
        result.initial_loss = initial
        if math.isfinite(initial):
            result.best_loss, result.best_epoch = initial, -1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar = Progress(epochs, initial=min(start_epoch, epochs), desc=description, unit="epoch",
                   leave=False, progress=progress)
    done_here = 0
    stopped = "completed" if start_epoch < epochs else "no-epochs"
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            train_loss = run_epoch(train, epoch, True)
            val_loss = math.nan
            if val is not None and len(val):
                with torch.no_grad():
                    val_loss = run_epoch(val, epoch, False)
            monitored = val_loss if val is not None and len(val) else train_loss
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                      "seconds": time.perf_counter() - t0}
            result.history.append(record)
            result.epochs_run = epoch + 1
            if math.isfinite(monitored) and monitored < result.best_loss - min_delta:
                result.best_loss = monitored
                result.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad = 0
            else:
                bad += 1
            # the postfix first, so the line written by update() reports this epoch's losses
            bar.set_postfix_str(f"train={train_loss:.4g}, val={val_loss:.4g}", refresh=False)
            bar.update(1)
            if callback is not None:
                callback(record)
            done_here += 1
            last = epoch + 1 == epochs
            if patience is not None and bad >= patience:
                stopped = "early-stopping"
            elif time_budget is not None and time.perf_counter() - t_start >= time_budget:
                stopped = "time-budget"
            elif stop_after is not None and done_here >= stop_after and not last:
                stopped = "interrupted"
            if stopped != "completed" or last or (epoch + 1) % checkpoint_every == 0:
                save_state(epoch)
            if stopped != "completed":
                break
    except KeyboardInterrupt:
        # Ctrl-C: the epochs done so far are kept in the checkpoint (when one is set), so
        # `resume=` continues from them; then the interrupt goes on to the caller
        if checkpoint is not None and result.epochs_run > start_epoch:
            save_state(result.epochs_run - 1)
        from xfusion._progress import emit

        emit(f"{description}: interrupted after {result.epochs_run} of {epochs} epoch(s)"
             + (f"; resume=\"{checkpoint}\" continues" if checkpoint is not None else ""))
        raise
    finally:
        bar.close()
    if restore_best and best_state is not None and stopped != "interrupted":
        model.load_state_dict(best_state)
    model.cpu().eval()
    result.stopped = stopped
    result.seconds = time.perf_counter() - t_start
    return result

