"""Type aliases shared across xfusion (string options are ``Literal`` aliases)."""

from __future__ import annotations

from typing import Literal, TypeVar

import xarray as xr

__all__ = ["Blend", "Device", "Precision", "T_Xarray"]

Device = Literal["auto", "cpu", "cuda"] | str
"""``"auto"`` (CUDA when the worker has one, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""

Precision = Literal["float32", "bf16", "fp16"]
"""Autocast dtype on CUDA; CPU always runs float32."""

Blend = Literal["none", "linear", "cosine"]
"""Overlap-blending ramp between neighbouring tiles."""

T_Xarray = TypeVar("T_Xarray", xr.DataArray, xr.Dataset)
