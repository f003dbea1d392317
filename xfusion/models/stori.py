"""STORI: a BRITS-style bidirectional recurrent imputer of optical series guided by SAR (torch).

Per pixel and direction, a chain of two ``LSTMCell`` s runs over the time steps: a SAR chain fed
with the (pre-processed) SAR features, and an optical chain fed with the completed optical value
and its mask. At every step the optical value is *regressed* from the recurrent state before it
is seen (``x̂_t``), the observed value replaces it where there is one (``x^c_t = m_t x_t +
(1 - m_t) x̂_t``), and a decay ``γ_t = exp(-ReLU(W_γ δ_t + b_γ))`` driven by the time since the
last optical observation ``δ_t`` weakens stale memory. Two such chains, on the series and on its
time reversal, are averaged; their disagreement is the uncertainty.

Two variants (see ``../shared/specs/stori.md`` §5.2-5.3):

``faithful`` (the public code):
    ``x̂_t = W_r h_opt + b_r`` from the optical state of step ``t-1``, which saw SAR only up
    to ``t-1``; then ``(h_sar, c_sar) = LSTM_sar(SAR_t)``; ``h_sar ← γ_t h_sar`` (the decay
    hits the SAR state and is carried forward); ``h_opt = LSTM_opt([x^c_t, m_t], (h_sar,
    c_sar))`` (the optical cell is seeded by the SAR state every step and its own cell state
    is discarded).
``fixed`` (default):
    the SAR chain is updated with ``SAR_t`` *first*; the optical chain keeps its own state,
    which the decay pulls towards the SAR state, ``h_opt ← γ_t h_opt + (1 - γ_t) h_sar``
    (fresh optical memory dominates after an observation, the SAR state after a long gap);
    ``x̂_t = W_r h_opt + b_r`` then uses SAR up to ``t``; ``(h_opt, c_opt) =
    LSTM_opt([x^c_t, m_t], (h_opt, c_opt))``.

Both have the same layers (two ``LSTMCell(2 -> H)``, ``Linear(1 -> H)`` decay, ``Linear(H -> 1)``
regression: 77,089 parameters per direction for H = 96 and two SAR features, as the original).
The loss per direction is the masked MAE summed over steps, ``Σ_t Σ_b |x_t - x̂_t| m_t /
(Σ_b m_t + 1e-5)``, and the BRITS total is ``L_f + L_b + λ mean|x^c_f - x^c_b|`` (λ = 0.1).

The module also holds the thin training loop used by :func:`xfusion.methods.gapfill.fit_stori`
(:func:`train_stori`): :func:`xfusion.training.fit` maps an image batch to one prediction
compared with one target under one masked loss, while STORI needs two directional losses
normalised per time step, the consistency term between the directions, input-mask
augmentation, and validation by the imputation error at hidden observations.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "RitsH",
    "Stori",
    "build_stori",
    "cpu_threads",
    "hide_runs",
    "impute",
    "stori_loss",
    "time_gaps_torch",
    "train_stori",
]


@contextlib.contextmanager
def cpu_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``n`` intra-op CPU threads (restored afterwards); no-op off the CPU or for None.

    The cells are small matrix products: one thread per task is fastest when dask already
    runs one task per core, and avoids oversubscription.
    """
    if n is None or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_gaps_torch(m: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """BRITS time gaps ``δ`` (B, T) from the mask ``m`` (B, T) and step positions ``pos`` (T,).

    ``δ_0 = 0``; ``δ_t = pos_t - pos_L`` with ``L`` the last observed step before ``t`` (the
    first step when there is none).
    """
    p = torch.where(m > 0, pos.expand_as(m), torch.full_like(m, -math.inf))
    last = torch.cummax(p, dim=1).values
    prev = torch.cat([torch.full_like(last[:, :1], -math.inf), last[:, :-1]], dim=1)
    prev = torch.where(torch.isfinite(prev), prev, pos[0].expand_as(prev))
    return pos.expand_as(m) - prev


class RitsH(nn.Module):
    """One direction of STORI (the ``RITS_H`` cell chain).

    Parameters
    ----------
    n_sar : int
        SAR features per step.
    hidden : int
        Hidden size ``H`` of both LSTM cells.
    decay : {"optical", "sar"}
        Which state the optical-gap decay acts on (``"sar"``: faithful).
    sar_first : bool
        Update the SAR chain with ``SAR_t`` before regressing ``x̂_t`` (False: faithful).
    """

    def __init__(self, n_sar: int = 2, hidden: int = 96, *, decay: str = "optical",
                 sar_first: bool = True) -> None:
        super().__init__()
        if decay not in ("optical", "sar"):
            raise ValueError(f"decay must be 'optical' or 'sar', found {decay!r}")
        self.hidden = int(hidden)
        self.decay_on = decay
        self.sar_first = bool(sar_first)
        self.sar_cell = nn.LSTMCell(int(n_sar), self.hidden)
        self.opt_cell = nn.LSTMCell(2, self.hidden)
        self.decay = nn.Linear(1, self.hidden)
        self.regression = nn.Linear(self.hidden, 1)

    def forward(self, x: torch.Tensor, m: torch.Tensor, d: torch.Tensor,
                s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the chain.

        Parameters
        ----------
        x, m, d : torch.Tensor
            Optical values (0 where missing), mask (1 observed) and time gaps, shape (B, T).
        s : torch.Tensor
            SAR features (B, T, n_sar).

        Returns
        -------
        xhat, xc : torch.Tensor
            Regressions ``x̂`` and completed series ``x^c``, shape (B, T).
        """
        b, t_len = x.shape
        z = x.new_zeros(b, self.hidden)
        h_s, c_s, h_o, c_o = z, z, z, z
        gamma = torch.exp(-torch.relu(self.decay(d.unsqueeze(-1))))  # (B, T, H)
        xhat_l: list[torch.Tensor] = []
        xc_l: list[torch.Tensor] = []
        inp = x.new_zeros(b, 2)
        for t in range(t_len):
            xt, mt, gt = x[:, t:t + 1], m[:, t:t + 1], gamma[:, t]
            if self.decay_on == "sar":
                if self.sar_first:  # SAR_t first, then the optical cell on step t-1's input
                    h_s, c_s = self.sar_cell(s[:, t], (h_s, c_s))
                    h_s = h_s * gt
                    h_o, _ = self.opt_cell(inp, (h_s, c_s))
                    xh = self.regression(h_o)
                    xc = mt * xt + (1 - mt) * xh
                    inp = torch.cat([xc, mt], dim=1)
                else:  # faithful RITS_H
                    xh = self.regression(h_o)
                    xc = mt * xt + (1 - mt) * xh
                    h_s, c_s = self.sar_cell(s[:, t], (h_s, c_s))
                    h_s = h_s * gt
                    h_o, _ = self.opt_cell(torch.cat([xc, mt], dim=1), (h_s, c_s))
            else:
                if self.sar_first:
                    h_s, c_s = self.sar_cell(s[:, t], (h_s, c_s))
                h_o = gt * h_o + (1 - gt) * h_s
                xh = self.regression(h_o)
                xc = mt * xt + (1 - mt) * xh
                h_o, c_o = self.opt_cell(torch.cat([xc, mt], dim=1), (h_o, c_o))
                if not self.sar_first:
                    h_s, c_s = self.sar_cell(s[:, t], (h_s, c_s))
            xhat_l.append(xh)
            xc_l.append(xc)
        return torch.cat(xhat_l, dim=1), torch.cat(xc_l, dim=1)


class Stori(nn.Module):
    """Bidirectional STORI (BRITS wrapper of two independent :class:`RitsH`).

    ``halo = 0`` (per pixel); ``out_channels = 2`` (imputation, uncertainty).
    """

    halo = 0
    out_channels = 2

    def __init__(self, n_sar: int = 2, hidden: int = 96, *, decay: str = "optical",
                 sar_first: bool = True) -> None:
        super().__init__()
        kw = {"decay": decay, "sar_first": sar_first}
        self.forward_net = RitsH(n_sar, hidden, **kw)
        self.backward_net = RitsH(n_sar, hidden, **kw)

    def forward(self, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
                pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """Impute ``x`` (B, T) with mask ``m`` (B, T), SAR ``s`` (B, T, F), positions ``pos`` (T,).

        Returns a dict with ``xhat_f``, ``xhat_b``, ``xc_f``, ``xc_b`` (backward outputs in
        forward time order), ``imputed`` (mean of the completed series) and ``uncertainty``
        (``|x̂_f - x̂_b|`` at missing steps, 0 at observed ones).
        """
        x = torch.where(m > 0, x, torch.zeros_like(x))
        d_f = time_gaps_torch(m, pos)
        xh_f, xc_f = self.forward_net(x, m, d_f, s)
        mr, xr, sr = m.flip(1), x.flip(1), s.flip(1)
        d_b = time_gaps_torch(mr, -pos.flip(0))
        xh_b, xc_b = self.backward_net(xr, mr, d_b, sr)
        xh_b, xc_b = xh_b.flip(1), xc_b.flip(1)
        imputed = (xc_f + xc_b) / 2
        unc = torch.where(m > 0, torch.zeros_like(x), (xh_f - xh_b).abs())
        return {"xhat_f": xh_f, "xhat_b": xh_b, "xc_f": xc_f, "xc_b": xc_b,
                "imputed": imputed, "uncertainty": unc}


def build_stori(bands: int = 1, *, n_sar: int = 2, hidden: int = 96, decay: str = "optical",
                sar_first: bool = True) -> Stori:
    """Registry builder: a STORI net for one optical band (``bands`` must be 1)."""
    if int(bands) != 1:
        raise ValueError(f"STORI imputes one optical band per model; found bands={bands!r}")
    return Stori(int(n_sar), int(hidden), decay=decay, sar_first=bool(sar_first))


def stori_loss(out: dict[str, torch.Tensor], x: torch.Tensor, m: torch.Tensor, *,
               consistency: float = 0.1) -> torch.Tensor:
    """BRITS loss: per direction ``Σ_t Σ_b |x - x̂| m / (Σ_b m + 1e-5)``, plus
    ``consistency × mean|x^c_f - x^c_b|``."""
    x = torch.where(m > 0, x, torch.zeros_like(x))
    den = m.sum(0) + 1e-5
    lf = ((x - out["xhat_f"]).abs() * m).sum(0) / den
    lb = ((x - out["xhat_b"]).abs() * m).sum(0) / den
    cons = (out["xc_f"] - out["xc_b"]).abs().mean()
    return lf.sum() + lb.sum() + consistency * cons


def hide_runs(m: torch.Tensor, *, fraction: float, max_run: int,
              generator: torch.Generator) -> torch.Tensor:
    """Boolean (B, T): runs of 1..``max_run`` steps covering about ``fraction`` of the steps,
    restricted to observed steps (``m > 0``)."""
    b, t_len = m.shape
    if fraction <= 0 or b == 0:
        return torch.zeros_like(m, dtype=torch.bool)
    max_run = max(1, min(int(max_run), t_len))
    nruns = max(1, math.ceil(fraction * t_len / ((1 + max_run) / 2)))
    starts = torch.randint(-max_run + 1, t_len, (b, nruns), generator=generator)
    lens = torch.randint(1, max_run + 1, (b, nruns), generator=generator)
    t = torch.arange(t_len).view(1, 1, -1)
    cover = ((t >= starts[..., None]) & (t < (starts + lens)[..., None])).any(dim=1)
    return cover.to(m.device) & (m > 0)


@torch.no_grad()
def impute(model: Stori, x: np.ndarray, m: np.ndarray, s: np.ndarray, pos: np.ndarray, *,
           device: torch.device | str = "cpu", batch_size: int = 8192,
           threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` on pixel series: ``x``, ``m`` (P, T), ``s`` (P, T, F), ``pos`` (T,).

    Returns ``(imputed, uncertainty)`` float32 arrays (P, T) in the model's units.
    """
    dev = torch.device(device)
    model = model.to(dev).eval()
    n = x.shape[0]
    out_i = np.empty(x.shape, dtype=np.float32)
    out_u = np.empty(x.shape, dtype=np.float32)
    p = torch.as_tensor(np.asarray(pos, np.float32), device=dev)
    with cpu_threads(threads, dev):
        for i in range(0, n, batch_size):
            sl = slice(i, min(n, i + batch_size))
            res = model(torch.as_tensor(x[sl], dtype=torch.float32, device=dev),
                        torch.as_tensor(m[sl], dtype=torch.float32, device=dev),
                        torch.as_tensor(s[sl], dtype=torch.float32, device=dev), p)
            out_i[sl] = res["imputed"].float().cpu().numpy()
            out_u[sl] = res["uncertainty"].float().cpu().numpy()
    return out_i, out_u


class _Stop(Exception):
    """Raised inside the loop when ``stop()`` asks training to end."""


def _val_mae(model: Stori, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
             pos: torch.Tensor, hidden: torch.Tensor, batch_size: int) -> float:
    """MAE of the imputation at the ``hidden`` observed steps of validation pixels."""
    model.eval()
    tot = 0.0
    cnt = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            h = hidden[sl]
            mi = m[sl] * (~h).float()
            out = model(x[sl], mi, s[sl], pos)
            err = (out["imputed"] - x[sl]).abs() * h.float()
            tot += float(err.sum())
            cnt += float(h.sum())
    return tot / cnt if cnt > 0 else math.nan


def train_stori(
    x: np.ndarray,
    m: np.ndarray,
    s: np.ndarray,
    pos: np.ndarray,
    *,
    val: np.ndarray | None,
    arch: dict[str, Any],
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    consistency: float,
    lr_step: int | None,
    lr_gamma: float,
    patience: int | None,
    augment: float,
    augment_max_run: int,
    seed: int,
    device: str | torch.device = "cpu",
    time_budget: float | None = None,
    threads: int | None = 1,
    callback: Callable[[dict[str, float]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Stori, dict[str, Any]]:
    """Train a STORI net on pixel series (the thin loop; see the module docstring).

    Parameters
    ----------
    x, m : numpy.ndarray
        Pre-processed optical values (NaN/any where missing) and mask, (P, T).
    s : numpy.ndarray
        Pre-processed SAR features (P, T, F).
    pos : numpy.ndarray
        Step positions (T,).
    val : numpy.ndarray of bool, optional
        (P,) True for validation pixels (held out in space by the caller); ``None`` trains on
        all pixels and keeps the last epoch (the faithful regime).
    arch : dict
        :func:`build_stori` keyword arguments.
    epochs, batch_size, lr, weight_decay, consistency
        Training hyper-parameters (Adam; BRITS loss).
    lr_step, lr_gamma : int or None, float
        StepLR schedule stepped every epoch (``None``: constant learning rate).
    patience : int or None
        Early stopping on the validation MAE (best weights restored).
    augment, augment_max_run : float, int
        Fraction of steps hidden from the input (in runs of up to ``augment_max_run``) in
        every training batch; the loss still scores them.
    seed : int
        Seeds initialisation, batch order, augmentation and validation masks.
    device : str or torch.device
        Training device.
    time_budget : float, optional
        Stop after the epoch during which this many seconds have passed.
    threads : int, optional
        CPU intra-op threads while training (``None``: torch's setting).
    callback : callable, optional
        Called with each epoch's record.
    stop : callable, optional
        Polled between batches; training ends (best weights kept) when it returns True.

    Returns
    -------
    model : Stori
        On the CPU, eval mode, best (or last) weights.
    info : dict
        ``history`` (per epoch: ``epoch``, ``train_loss``, ``val_mae``, ``seconds``),
        ``best_epoch``, ``best_val_mae``, ``stopped`` (``"completed"``, ``"early-stopping"``,
        ``"time-budget"``, ``"interrupted"``, ``"stopped"``), ``seconds``, ``n_train``,
        ``n_val``.

    Raises
    ------
    KeyboardInterrupt
        Interrupted before the first epoch completed. Later, training ends with the best (or
        last complete) epoch's weights and ``stopped="interrupted"``.
    """
    dev = torch.device(device)
    with cpu_threads(threads, dev):
        return _train(x, m, s, pos, val=val, arch=arch, epochs=epochs, batch_size=batch_size,
                      lr=lr, weight_decay=weight_decay, consistency=consistency,
                      lr_step=lr_step, lr_gamma=lr_gamma, patience=patience, augment=augment,
                      augment_max_run=augment_max_run, seed=seed, dev=dev,
                      time_budget=time_budget, callback=callback, stop=stop)


def _train(x: np.ndarray, m: np.ndarray, s: np.ndarray, pos: np.ndarray, *,
           val: np.ndarray | None, arch: dict[str, Any], epochs: int, batch_size: int,
           lr: float, weight_decay: float, consistency: float, lr_step: int | None,
           lr_gamma: float, patience: int | None, augment: float, augment_max_run: int,
           seed: int, dev: torch.device, time_budget: float | None,
           callback: Callable[[dict[str, float]], None] | None,
           stop: Callable[[], bool] | None = None) -> tuple[Stori, dict[str, Any]]:
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_stori(1, **arch).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, lr_step, lr_gamma) if lr_step else None
    xt = torch.as_tensor(np.nan_to_num(x), dtype=torch.float32)
    mt = torch.as_tensor(m, dtype=torch.float32)
    st = torch.as_tensor(s, dtype=torch.float32)
    pt = torch.as_tensor(np.asarray(pos, np.float32), device=dev)
    is_val = np.zeros(x.shape[0], bool) if val is None else np.asarray(val, bool)
    tr = torch.as_tensor(np.flatnonzero(~is_val))
    va = np.flatnonzero(is_val)
    if va.size:
        gv = torch.Generator().manual_seed(seed + 7919)
        vx, vm, vs = xt[va].to(dev), mt[va].to(dev), st[va].to(dev)
        vh = hide_runs(mt[va], fraction=max(augment, 0.2), max_run=augment_max_run,
                       generator=gv).to(dev)
    history: list[dict[str, float]] = []
    best = math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad = 0
    stopped = "completed"
    last_state: dict[str, torch.Tensor] | None = None
    try:
        for epoch in range(int(epochs)):
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = tr[torch.randperm(tr.numel(), generator=g)]
            model.train()
            tot, nb = 0.0, 0
            for i in range(0, order.numel(), batch_size):
                if stop is not None and stop():
                    raise _Stop
                idx = order[i:i + batch_size]
                bx, bm, bs = xt[idx].to(dev), mt[idx].to(dev), st[idx].to(dev)
                hid = hide_runs(mt[idx], fraction=augment, max_run=augment_max_run,
                                generator=g)
                out = model(bx, bm * (~hid.to(dev)).float(), bs, pt)
                loss = stori_loss(out, bx, bm, consistency=consistency)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach())
                nb += 1
            if sched is not None:
                sched.step()
            vmae = _val_mae(model, vx, vm, vs, pt, vh, 4 * batch_size) if va.size else math.nan
            rec = {"epoch": epoch, "train_loss": tot / max(nb, 1), "val_mae": vmae,
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            if va.size:
                if math.isfinite(vmae) and vmae < best:
                    best, best_epoch, bad = vmae, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
            else:
                last_state = copy.deepcopy(model.state_dict())
            if callback is not None:
                callback(rec)
            if va.size and patience is not None and bad >= patience:
                stopped = "early-stopping"
                break
            if time_budget is not None and time.perf_counter() - t_start >= time_budget:
                stopped = "time-budget"
                break
    except (KeyboardInterrupt, _Stop) as err:
        if not history:
            if isinstance(err, _Stop):
                raise KeyboardInterrupt from None
            raise
        stopped = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped"
        if best_state is None and last_state is not None:
            model.load_state_dict(last_state)  # the last complete epoch, not a partial one
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1 if history else None
    model = model.cpu().eval()
    info = {"history": history, "best_epoch": best_epoch,
            "best_val_mae": best if math.isfinite(best) else None, "stopped": stopped,
            "seconds": time.perf_counter() - t_start, "n_train": int(tr.numel()),
            "n_val": int(va.size), "device": str(dev)}
    return model, info
