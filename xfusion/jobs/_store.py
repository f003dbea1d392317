"""The output store of a job: the Zarr v3 template, its provenance and the resume check."""

from __future__ import annotations

import hashlib
import json
import os
import time as _time
from typing import TYPE_CHECKING, Any

import numpy as np

from xfusion.errors import JobError

if TYPE_CHECKING:
    from xfusion.jobs.runner import Plan
    from xfusion.jobs.spec import Job

PROVENANCE_ATTR = "xfusion:provenance"
"""Group attribute with the method, parameters, weights, job and input item ids (JSON)."""
JOB_ATTR = "xfusion:job_fingerprint"
"""Group attribute fingerprinting the job (a re-run resumes only the same job)."""

DONE, EMPTY = 1, 2
"""Marker values: tile written; tile with nothing to compute (outside the AOI, no data)."""


def _weights_sha256(path: str | None) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise JobError(f"Job field 'weights': {path!r} does not exist; check the path.")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(job: Job, weights_sha: str | None) -> dict[str, Any]:
    """What must not change between a run and its resume (store and scheduling fields may)."""
    d = job.to_dict()
    for k in ("store", "batch_size", "retries", "max_in_flight", "name", "url", "weights"):
        d.pop(k, None)
    d["weights_sha256"] = weights_sha
    return d


def _template(pl: Plan, times: np.ndarray) -> Any:
    import dask.array as da
    import xarray as xr
    from odc.geo.xr import xr_zeros

    base = xr_zeros(pl.geobox, dtype="float32", chunks=(pl.tile, pl.tile))
    coords = {"time": ("time", times)}
    coords.update({d: base.coords[d] for d in pl.dims})
    shape = (len(times), *pl.geobox.shape)
    data = {
        v: (
            ("time", *pl.dims),
            da.full(shape, np.nan, dtype="float32", chunks=(1, pl.tile, pl.tile)),
            {"long_name": f"fused {v}"},
        )
        for v in pl.variables
    }
    ds = xr.Dataset(data, coords=coords)
    return ds.odc.assign_crs(pl.geobox.crs)


def _open_or_create(job: Job, pl: Plan, times: np.ndarray, overwrite: bool) -> tuple[Any, int]:
    """Create the template store (or check and reopen it); return (zarr group, n preexisting)."""
    from xfusion.io.tiled import create_markers, resume_problem, tiled_layout
    from xfusion.io.zarr import COMPLETE_ATTR, LAYOUT_ATTR, existing_group, open_group, to_zarr

    weights_sha = _weights_sha256(job.weights)
    tmpl = _template(pl, times)
    layout = json.loads(json.dumps(tiled_layout(tmpl, pl.dims, list(pl.variables), (pl.tile, pl.tile))))
    layout["job"] = _fingerprint(job, weights_sha)
    existing = None if overwrite else existing_group(job.store, None, None)
    if existing is not None:
        problem = resume_problem(existing, layout)
        if problem:
            raise JobError(
                f"The output store {job.store!r} exists and cannot be resumed by this job (a "
                f"different job or grid): {problem}. Pass overwrite=True (`xfusion run "
                "--overwrite`) to start afresh, or use another store."
            )
        return open_group(job.store, None, "r+", None), 1
    encoding: dict[str, Any] = {}
    for v in pl.variables:
        enc: dict[str, Any] = {"chunks": (1, job.chunk, job.chunk)}
        if job.shards:
            enc["shards"] = (1, job.tile, job.tile)
        encoding[v] = enc
    from xfusion._version import __version__

    tmpl.attrs[PROVENANCE_ATTR] = json.dumps(
        {
            "method": job.method,
            "params": job.to_dict()["params"],
            "weights": None if job.weights is None else os.path.basename(job.weights),
            "weights_sha256": weights_sha,
            "fine": job.fine,
            "coarse": job.coarse,
            "bands": job.to_dict()["bands"],
            "time": list(job.time),
            "xfusion_version": __version__,
            "created": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
            "job": job.to_dict(),
            "input_items": [],
        }
    )
    to_zarr(
        tmpl,
        job.store,
        mode="w" if overwrite else "w-",
        encoding=encoding,
        compression_level=job.compression_level,
        compute=False,
    )
    zgroup = open_group(job.store, None, "r+", None)
    markers = create_markers(zgroup, pl.dims, list(pl.grid), 3)
    # tiles outside the AOI geometry: nothing to compute
    for iy, ix in pl.outside():
        markers[iy, ix] = EMPTY
    zgroup.attrs[COMPLETE_ATTR] = False  # until the last tile is done
    zgroup.attrs[LAYOUT_ATTR] = json.dumps(layout)
    return zgroup, 0


def _add_items(zgroup: Any, ids: set[str]) -> None:
    prov = json.loads(zgroup.attrs.get(PROVENANCE_ATTR, "{}"))
    known = set(prov.get("input_items", []))
    if ids <= known:
        return
    prov["input_items"] = sorted(known | ids)
    zgroup.attrs[PROVENANCE_ATTR] = json.dumps(prov)


def finished_markers(job: Job, pl: Plan) -> np.ndarray | None:
    """The done-markers of an existing store of this job whose every tile is done, else None.

    Checked before anything is searched, so a finished job re-run offline (no STAC API) ends at
    once: the store must hold this job's fingerprint and the same tile grid.
    """
    from xfusion.io.tiled import MARKER_NAME
    from xfusion.io.zarr import LAYOUT_ATTR, existing_group

    existing = existing_group(job.store, None, None)
    if existing is None or MARKER_NAME not in existing:
        return None
    layout = existing.attrs.get(LAYOUT_ATTR)
    if layout is None:
        return None
    layout = json.loads(layout) if isinstance(layout, str) else layout
    if layout.get("job") != json.loads(json.dumps(_fingerprint(job, _weights_sha256(job.weights)))):
        return None
    status = np.asarray(existing[MARKER_NAME][...])
    if status.shape != tuple(pl.grid) or not np.all(status > 0):
        return None
    return status



def describe_store(job: Job) -> tuple[str, str] | None:
    """Write the STAC Item of a finished job's store next to it (``out.stac.json``) and a
    Collection (``out.collection.json``) holding it; return both paths (None for a store that
    is not a local path). Only metadata is read."""
    import pystac

    from xfusion.io.stac_item import item_path, stac_collection, write_stac_item
    from xfusion.io.zarr import open_zarr

    store = os.fspath(job.store)
    if "://" in store or not os.path.isdir(store):
        return None
    ds = open_zarr(store)
    prov = json.loads(ds.attrs.get(PROVENANCE_ATTR, "{}"))
    props = {"xfusion:input_items": list(prov.get("input_items", [])),
             "xfusion:job": job.name or os.path.basename(store.rstrip("/\\"))}
    ipath = write_stac_item(ds, store, method=job.method,
                            parameters=dict(prov.get("params") or {}), properties=props)
    item = pystac.Item.from_file(ipath)
    name = job.name or os.path.splitext(os.path.basename(store.rstrip("/\\")))[0]
    cpath = item_path(store)[: -len(".stac.json")] + ".collection.json"
    col = stac_collection([item], id=name, title=f"xfusion job {name}",
                          description=f"xfusion {job.method} from {job.fine} and {job.coarse}, "
                          f"{job.time[0]} to {job.time[1]}")
    col.clear_items()
    col.add_link(pystac.Link("item", os.path.basename(ipath), media_type=pystac.MediaType.JSON,
                             title=item.id))
    with open(cpath, "w") as fh:
        json.dump(col.to_dict(include_self_link=False, transform_hrefs=False), fh, indent=1)
    return ipath, cpath
