"""STARFM on a torch device: the numba kernel's algorithm over shifted windows (GPU path).

:func:`starfm_block_torch` takes the same arguments and returns the same arrays as
:func:`xfusion.methods._starfm_kernel.starfm_block`, but runs on a torch device (CUDA in
practice). Instead of looping over centres, it loops over the window offsets ``(di, dj)``: for
one offset, the candidates of ALL interior centres are one shifted view of the (padded)
per-candidate planes, so each step is a handful of elementwise tensor operations over the whole
block. The per-centre sums are accumulated in the same order as the numba kernel (pair, window
row, window column), with the same float32 operations (no fused multiply-add), so on the CPU the
result equals the numba kernel's bit for bit; on CUDA it is within float32 rounding of it
(``abs`` and comparisons are exact, ``1 / t`` and products are correctly rounded IEEE operations
in PyTorch's CUDA kernels, so in practice it is identical too).

torch is imported when a function here is called, never at ``import xfusion``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xfusion._compat import lazy_import
from xfusion.methods._starfm_kernel import (
    USDA_DATA_RANGE,
    USDA_FILL,
    USDA_UNCERTAINTY,
    StarfmDiagnostics,
    _check_block_inputs,
    decision_terms,
    distance_weights,
)

if TYPE_CHECKING:
    import torch

__all__ = ["starfm_block_torch"]


def _torch() -> Any:
    return lazy_import("torch", purpose="STARFM on a GPU (device='cuda')")


def starfm_block_torch(
    fine: np.ndarray,
    coarse_pair: np.ndarray,
    coarse_target: np.ndarray,
    /,
    *,
    window: int | tuple[int, int],
    thresholds: float | Sequence[float],
    halo: int | Sequence[int] = 0,
    fine_uncertainty: float = USDA_UNCERTAINTY,
    coarse_uncertainty: float = USDA_UNCERTAINTY,
    distance_scale: float | None = None,
    distance_offset: float = 1.0,
    data_range: tuple[float, float] | None = USDA_DATA_RANGE,
    reference: bool = True,
    fill_value: float = USDA_FILL,
    temporal_distance: bool | None = None,
    device: str | torch.device = "cuda",
    diagnostics: bool = False,
) -> np.ndarray | StarfmDiagnostics:
    """Predict one band of one target date with STARFM on a torch device.

    Same arguments, semantics and outputs as
    :func:`xfusion.methods._starfm_kernel.starfm_block` (float32 working precision), plus
    ``device``. Inputs and outputs are numpy arrays; the work happens on ``device``.

    Parameters
    ----------
    fine, coarse_pair, coarse_target : numpy.ndarray
        ``L1`` and ``M1`` as ``(npairs, H, W)`` or ``(H, W)``, ``M2`` as ``(H, W)``.
    window, thresholds, halo, fine_uncertainty, coarse_uncertainty, distance_scale,
    distance_offset, data_range, reference, fill_value, temporal_distance, diagnostics
        As in :func:`~xfusion.methods._starfm_kernel.starfm_block`.
    device : str or torch.device, default "cuda"
        Where to compute (``"cuda"``, ``"cuda:1"``, ``"cpu"``...).

    Returns
    -------
    numpy.ndarray or StarfmDiagnostics
        As :func:`~xfusion.methods._starfm_kernel.starfm_block`.

    Raises
    ------
    InvalidParameterError
        On inconsistent shapes or invalid parameter values.
    MissingOptionalDependency
        When torch is not installed.

    Notes
    -----
    Memory on the device is about 12 planes of the block per pair (float32). The work is
    ``npairs * window**2`` steps of ~15 elementwise operations over the block interior, so
    large blocks (1-4 k pixels on a side) keep a GPU busy; small blocks are launch-bound.
    """
    torch = _torch()
    chk = _check_block_inputs(fine, coarse_pair, coarse_target, window=window, halo=halo,
                              thresholds=thresholds, distance_scale=distance_scale,
                              distance_offset=distance_offset)
    l1, m1, m2, thr, distance_scale = chk.l1, chk.m1, chk.m2, chk.thresholds, chk.distance_scale
    before, after = chk.before, chk.after
    r0, r1, c0, c1 = chk.interior
    npairs, nrow, ncol = l1.shape
    if temporal_distance is None:
        temporal_distance = npairs > 1
    terms = decision_terms(fine_uncertainty, coarse_uncertainty, thr,
                           distance_offset=distance_offset,
                           temporal_distance=bool(temporal_distance), reference=reference,
                           dtype=np.float32)  # fmt: skip
    dev = torch.device(device)
    f32 = torch.float32
    hi_, wi_ = r1 - r0, c1 - c0

    def t(a: np.ndarray) -> torch.Tensor:
        # float32 cast on the host, exactly as the numba kernel's astype(float32)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)

    with torch.no_grad():
        L = t(l1)
        M1 = t(m1)
        M2 = t(m2).expand(npairs, nrow, ncol)
        valid = torch.isfinite(L) & torch.isfinite(M1) & torch.isfinite(M2)
        if data_range is not None:
            lo = torch.tensor(np.float32(data_range[0]), device=dev)
            hi = torch.tensor(np.float32(data_range[1]), device=dev)
            for x in (L, M1, M2):
                valid &= (x >= lo) & (x <= hi)
        off = torch.tensor(np.float32(distance_offset), device=dev)
        zero = torch.zeros((), dtype=f32, device=dev)
        a = (M1 - L).abs()
        b = (M1 - M2).abs()
        tdis = (b + off) * (a + off) if temporal_distance else a + off
        unit = tdis < torch.tensor(terms.unit_limit, device=dev)
        one = torch.ones((), dtype=f32, device=dev)
        uw = torch.tensor(terms.unit_weight, device=dev)
        e = torch.where(unit, torch.tensor(-1.0, dtype=f32, device=dev), torch.div(one, tdis))
        e = torch.where(valid, e, zero)
        v = torch.where(valid, (L + M2) - M1, zero)
        lm = torch.where(valid, L, torch.tensor(float("nan"), dtype=f32, device=dev))
        a = torch.where(valid, a, zero)
        b = torch.where(valid, b, zero)
        # centre terms over the interior (minima over the pairs valid at the centre)
        vc = valid[:, r0:r1, c0:c1]
        inf = torch.tensor(float("inf"), dtype=f32, device=dev)
        nan = torch.tensor(float("nan"), dtype=f32, device=dev)
        any_c = vc.any(dim=0)
        ta = torch.where(vc, a[:, r0:r1, c0:c1], inf).amin(dim=0) + terms.lsr
        tb = torch.where(vc, b[:, r0:r1, c0:c1], inf).amin(dim=0) + terms.msr
        ta = torch.where(any_c, ta, nan)
        tb = torch.where(any_c, tb, nan)
        lcen = lm[:, r0:r1, c0:c1]

        # pad so that every window offset of every interior centre is a plain slice; padded
        # positions are not candidates (NaN fine value -> never similar, weight term 0)
        pads = (before, after, before, after)  # (left, right, top, bottom) for F.pad

        def pad(x: torch.Tensor, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(x, pads, mode="constant", value=value)

        lm_p, a_p, b_p, e_p, v_p = (
            pad(lm, float("nan")), pad(a, 0.0), pad(b, 0.0), pad(e, 0.0), pad(v, 0.0)
        )  # fmt: skip
        dtab = distance_weights(window, distance_scale, np.dtype(np.float32))
        sw = torch.zeros((hi_, wi_), dtype=f32, device=dev)
        swv = torch.zeros_like(sw)
        cnt = torch.zeros((hi_, wi_), dtype=torch.int32, device=dev) if diagnostics else None
        for p in range(npairs):
            th = torch.tensor(terms.similarity[p], device=dev)
            lc = lcen[p]
            for di in range(-before, after + 1):
                rs = r0 + di + before  # row start of the shifted view in the padded planes
                for dj in range(-before, after + 1):
                    cs = c0 + dj + before
                    sl = (p, slice(rs, rs + hi_), slice(cs, cs + wi_))
                    keep = (lm_p[sl] - lc).abs_() < th
                    keep &= (a_p[sl] <= ta) | (b_p[sl] <= tb)
                    ek = e_p[sl]
                    w = torch.where(ek < zero, uw, ek * float(dtab[di + before, dj + before]))
                    w = torch.where(keep, w, zero)
                    sw += w
                    swv += w * v_p[sl]
                    if cnt is not None:
                        cnt += keep
        p64 = (swv.double() / sw.double()).cpu().numpy()
        sw_np = sw.cpu().numpy()
        cnt_np = cnt.cpu().numpy() if cnt is not None else None

    has = sw_np > 0
    if reference:
        ok = has
        if data_range is not None:
            ok = ok & (p64 > data_range[0]) & (p64 < data_range[1])
        rounded = np.floor(p64 + 0.5)
        if math.isfinite(fill_value) and float(fill_value).is_integer():
            out = np.where(ok, rounded, fill_value).astype(np.int32)
        else:
            out = np.where(ok, rounded, fill_value)
    else:
        out = np.where(has, p64, np.nan).astype(np.float32)
    if diagnostics:
        assert cnt_np is not None
        return StarfmDiagnostics(out, cnt_np, sw_np)
    return out
