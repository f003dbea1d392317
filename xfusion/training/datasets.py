"""A torch ``Dataset``/``DataLoader`` over sampled patches, augmentation and normalisation.

:class:`PatchDataset` turns the patches of a sampler into ``(x, y)`` float32 tensor pairs:
``x`` the input channels, ``y`` the target channels (NaN where unobserved, which the masked
losses of :func:`xfusion.training.fit` exclude). Augmentation draws one of the eight
flips/90° rotations per item from ``(seed, epoch, index)``, so it is the same whatever the
number of loader workers and after resuming. :func:`channel_stats` computes normalisation
statistics from training patches, to be stored with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xfusion.errors import InvalidParameterError
from xfusion.training.sampling import Patch, PatchSource

__all__ = ["NormStats", "PatchDataset", "augment", "channel_stats", "make_loader"]


def augment(block: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform ``k`` (0..7) to the last two axes: ``k % 4`` quarter turns,
    then a left-right flip when ``k >= 4``."""
    out = np.rot90(block, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


class PatchDataset(torch.utils.data.Dataset):  # type: ignore[misc]
    """Patches of a :class:`PatchSource` as ``(x, y)`` tensors.

    Parameters
    ----------
    source : PatchSource
        Where the patches are read from.
    patches : sequence of Patch
        Usually ``sampler.patches``.
    inputs, targets : sequence of int
        Channel positions of the model input and of the target, in the order the model
        expects (channels may repeat or be reordered).
    augment : bool
        Random flips/90° rotations (square patches: all eight; others: the four that keep
        the shape), drawn from ``(seed, epoch, index)``.
    seed : int
        Seed of the augmentation.
    mask_targets : bool
        Set target pixels to NaN where any input channel is NaN (so the loss ignores pixels
        the model cannot be asked to predict).
    nan_fill : float, optional
        Replace NaN inputs by this value (``None``: keep NaN, for models that handle it).
    """

    def __init__(
        self,
        source: PatchSource,
        patches: Sequence[Patch],
        *,
        inputs: Sequence[int],
        targets: Sequence[int],
        augment: bool = False,
        seed: int = 0,
        mask_targets: bool = True,
        nan_fill: float | None = None,
    ) -> None:
        self.source = source
        self.patches = list(patches)
        c = source.nchannels
        self.inputs = [int(i) for i in inputs]
        self.targets = [int(i) for i in targets]
        if any(not 0 <= i < c for i in (*self.inputs, *self.targets)):
            raise InvalidParameterError(
                f"inputs {self.inputs!r} and targets {self.targets!r} must be channel positions "
                f"in [0, {c})."
            )
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.mask_targets = bool(mask_targets)
        self.nan_fill = nan_fill

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (called by :func:`fit`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.patches)

    def transform_of(self, i: int) -> int:
        """The dihedral transform (0..7) applied to item ``i`` at the current epoch."""
        if not self.augment:
            return 0
        p = self.patches[i]
        k = int(np.random.default_rng([self.seed, self.epoch, i]).integers(8))
        if p.height != p.width and k % 2 == 1:  # a quarter turn would change the shape
            k -= 1
        return k

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.source.read(self.patches[i])
        x = block[self.inputs]
        y = block[self.targets]
        if self.mask_targets:
            y = np.where(np.isfinite(x).all(axis=0, keepdims=True), y, np.float32(np.nan))
        if self.nan_fill is not None:
            x = np.where(np.isfinite(x), x, np.float32(self.nan_fill))
        k = self.transform_of(i)
        if k:
            x, y = augment(x, k), augment(y, k)
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(
            np.ascontiguousarray(y, np.float32)
        )


def _seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in loader workers
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` whose order depends only on ``(seed, epoch)`` (any worker count)."""
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle,
        generator=gen,
        num_workers=int(num_workers),
        worker_init_fn=_seed_worker if num_workers else None,
        drop_last=False,
        persistent_workers=False,
    )


@dataclass(frozen=True)
class NormStats:
    """Mean and standard deviation per channel group, from training data."""

    mean: tuple[float, ...]
    """Mean per group."""
    std: tuple[float, ...]
    """Standard deviation per group (at least ``min_std``)."""
    count: tuple[int, ...]
    """Observed pixels used per group."""

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-able form (stored in checkpoint metadata)."""
        return {"mean": list(self.mean), "std": list(self.std), "count": list(self.count)}


def channel_stats(
    source: PatchSource,
    patches: Sequence[Patch],
    groups: Sequence[Sequence[int]],
    *,
    min_std: float = 1e-6,
) -> NormStats:
    """Mean/std of the observed pixels of each channel group over ``patches``.

    A group pools several channels (e.g. the fine and coarse images of one band, so that a
    single z-score keeps their differences meaningful). Overlapping patches count their
    shared pixels more than once, as the loss does. Float64 accumulation.

    Raises
    ------
    InvalidParameterError
        A group without any observed pixel in the patches.
    """
    n = np.zeros(len(groups))
    s = np.zeros(len(groups))
    ss = np.zeros(len(groups))
    shift = np.full(len(groups), np.nan)
    for p in patches:
        block = source.read(p).astype(np.float64)
        for g, chans in enumerate(groups):
            v = block[list(chans)]
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            if np.isnan(shift[g]):
                shift[g] = v[0]  # shifted sums: no cancellation for large offsets (kelvin)
            d = v - shift[g]
            n[g] += v.size
            s[g] += d.sum()
            ss[g] += (d * d).sum()
    if np.any(n == 0):
        bad = [list(groups[i]) for i in np.flatnonzero(n == 0)]
        raise InvalidParameterError(
            f"No observed pixel in channel group(s) {bad!r} of the {len(patches)} training "
            "patches; normalisation statistics cannot be computed."
        )
    mean = shift + s / n
    var = np.maximum(ss / n - (s / n) ** 2, 0.0)
    std = np.maximum(np.sqrt(var), min_std)
    return NormStats(tuple(float(v) for v in mean), tuple(float(v) for v in std),
                     tuple(int(v) for v in n))
