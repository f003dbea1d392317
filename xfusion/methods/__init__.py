"""The fusion, super-resolution and gap-filling methods, and their registry.

:func:`available` lists the methods, :func:`get` returns one :class:`Method` (its function,
parameter table, halo rule and needs): the single source the command line, jobs and the
README read. Importing this package imports no method module; each is imported on first use.
"""

from __future__ import annotations

from xfusion.methods.registry import KINDS, Method, Param, available, get, register

__all__ = ["KINDS", "Method", "Param", "available", "get", "register"]
