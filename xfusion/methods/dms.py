"""Data-mining sharpener (DMS): regression trees from fine predictors to coarse LST.

Gao, Kustas & Anderson (2012), as implemented in spirit by pyDMS (Guzinski & Nieto; GPL, not
used here): the fine predictors (NDVI, reflectance) are aggregated to the coarse grid; a
regression tree (or bagged trees, scikit-learn) is fitted on the coarse cells whose LST is
observed and whose predictors are homogeneous; the tree predicts LST on the fine grid; a
residual correction makes the result aggregate back to the coarse observation.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal

import xarray as xr

__all__ = ["dms"]



def dms(
    obj: xr.DataArray | xr.Dataset,
    /,
    *,
    guide: xr.DataArray | xr.Dataset,
    scale: int | None = None,
    window: int = 0,
    homogeneity: float = 0.8,
    std_features: bool = False,
    residual: Literal["cell", "bilinear", "none"] = "cell",
    aggregation: Literal["power", "mean"] = "power",
    regressor: Literal["tree", "bagging"] = "bagging",
    n_estimators: int = 10,
    max_depth: int | None = None,
    min_samples_leaf: int = 5,
    min_samples: int = 20,
    seed: int = 0,
    name: Hashable | None = None,
) -> xr.DataArray | xr.Dataset:
    """Sharpen coarse LST with regression trees on fine predictors (data-mining sharpener).

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        Coarse LST (kelvin for ``aggregation="power"``) on its native grid, optionally with
        ``time`` (one model per date).
    guide : xarray.DataArray or xarray.Dataset
        Fine predictors (NDVI, reflectance bands) on a grid nested in the coarse one by
        ``scale`` (see :func:`xfusion.methods.super_resolve.nested_grids`).
    scale : int, optional
        Fine pixels per coarse pixel (default: from the grids).
    window : int, default 0
        Moving-window size in coarse pixels for local models (0: global model only, as in the
        SIF-CNN-SR evaluation). Each ``window x window`` block of coarse pixels gets a local
        model fitted on the cells of the block extended by ``window // 2``, combined with the
        global model by inverse mean-squared-residual weighting (residuals over the block's
        observed cells).
    homogeneity : float, default 0.8
        Share of the observed coarse cells used for fitting: the most homogeneous ones, by the
        mean over predictors of the within-cell coefficient of variation ``std / |mean|``.
    std_features : bool, default False
        Add the within-cell standard deviation of each predictor as a feature (the local
        ``scale x scale`` standard deviation around each pixel on the fine grid).
    residual : {"cell", "bilinear", "none"}, default "cell"
        Residual correction: ``"cell"`` adds each coarse cell's residual to its fine pixels
        (in ``T^4`` with ``aggregation="power"``), so the result aggregates back to the
        observation exactly; ``"bilinear"`` interpolates the residuals between cell centres
        (smoother, approximately consistent); ``"none"`` keeps the tree prediction.
    aggregation : {"power", "mean"}, default "power"
        How fine temperatures aggregate to a coarse pixel: the radiance-consistent power mean
        ``(mean T^4)^(1/4)`` (kelvin only) or the plain mean.
    regressor : {"tree", "bagging"}, default "bagging"
        One ``DecisionTreeRegressor`` or ``n_estimators`` bagged trees.
    n_estimators : int, default 10
        Trees in the bagging ensemble.
    max_depth : int, optional
        Maximum tree depth (None: grown until ``min_samples_leaf``).
    min_samples_leaf : int, default 5
        Minimum coarse cells per leaf.
    min_samples : int, default 20
        Minimum homogeneous cells to fit the global model (and each local one).
    seed : int, default 0
        Random state of the trees.
    name : hashable, optional
        Output name.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Sharpened LST on the guide's grid (lazy on dask inputs: the fit is one task per date
        on the coarse grid, the prediction block-wise with a 1-coarse-pixel halo). NaN where a
        guide pixel or the coarse pixel is NaN.

    Raises
    ------
    NotEnoughDataError
        At compute time, when a date has fewer than ``min_samples`` usable coarse cells.
    InvalidParameterError, GridMismatchError
        Bad options or grids.

    References
    ----------
    Gao F., Kustas W.P., Anderson M.C., "A data mining approach for sharpening thermal
    satellite imagery over land", Remote Sensing 4:3287-3319 (2012).
    Guzinski R., Nieto H., "Evaluating the feasibility of using Sentinel-2 and Sentinel-3
    satellites for high-resolution evapotranspiration estimations", Remote Sens. Environ.
    221:157-172 (2019) (pyDMS).
    """
    from xfusion.methods.super_resolve import super_resolve

    params = {"window": window, "homogeneity": homogeneity, "std_features": std_features,
              "residual": residual, "aggregation": aggregation, "regressor": regressor,
              "n_estimators": n_estimators, "max_depth": max_depth,
              "min_samples_leaf": min_samples_leaf, "min_samples": min_samples, "seed": seed}
    return super_resolve(obj, guide=guide, scale=scale, method="dms", params=params, name=name)


# --------------------------------------------------------------------------------------------
# numpy kernels




















