"""Quiet, threaded loopback HTTP servers for testing remote reads and STAC API searches.

* :func:`serve_directory` serves a folder with HTTP/1.1 keep-alive and single-range support,
  so GDAL's ``/vsicurl/`` reads Cloud-Optimized GeoTIFFs from it by range requests.
* :func:`serve_stac_api` serves the same folder plus a minimal STAC API under ``/stac``
  (landing page, conformance, ``/collections``, ``GET``/``POST /search`` with ``collections``,
  ``ids``, ``bbox``, ``intersects``, ``datetime``, ``query`` and ``limit``, and ``next`` paging
  links), built from the item and collection JSON files found in the folder.
* Both accept :class:`Fault` rules that inject HTTP errors (``503``, ``404``...), slow
  responses and truncated bodies, to test retries and error reporting.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import fnmatch
import functools
import http.server
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from xfusion.errors import InvalidParameterError

__all__ = ["Fault", "LoopbackServer", "serve_directory", "serve_stac_api"]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_CHUNK = 1 << 16
_API = "/stac"
_DEFAULT_LIMIT = 10
_MAX_LIMIT = 10000

_CONFORMANCE = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Parse one ``bytes=`` range. Return (start, end), "unsatisfiable", or None to ignore it.

    Multi-range and malformed headers are ignored (the whole file is sent with 200), which
    RFC 9110 allows.
    """
    m = _RANGE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


# --------------------------------------------------------------------------------------------
# fault injection


@dataclass
class Fault:
    """One fault rule of a loopback server: what goes wrong, for which requests, how often.

    A request is affected by the first rule whose ``match`` pattern matches its path and that
    has uses left. Rules combine: ``Fault("*.tif", delay=0.2, status=503)`` waits, then fails.

    Examples
    --------
    >>> Fault("*LST_Day_1km.tif", status=503, times=2)  # two 503s, then normal answers
    Fault(match='*LST_Day_1km.tif', status=503, delay=0.0, truncate=None, times=2, methods=None)
    """

    match: str = "*"
    """``fnmatch`` pattern on the URL path (no query string), e.g. ``"*/B04.tif"``."""
    status: int | None = None
    """HTTP status answered instead of the content (``503``, ``404``, ``500``...)."""
    delay: float = 0.0
    """Seconds to wait before answering (a slow server)."""
    truncate: float | None = None
    """Fraction of the body actually sent (the ``Content-Length`` announces all of it); the
    connection is then closed. Applies to ``GET`` responses with a body only."""
    times: int | None = None
    """How many matching requests are affected; ``None`` means all of them."""
    methods: tuple[str, ...] | None = None
    """HTTP methods affected, e.g. ``("GET",)``; ``None`` means all."""

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= int(self.status) <= 599:
            raise InvalidParameterError(
                f"Fault status={self.status!r} is not an HTTP error code; use 400-599 "
                "(e.g. 503 Service Unavailable, 404 Not Found)."
            )
        if self.truncate is not None and not 0.0 <= float(self.truncate) < 1.0:
            raise InvalidParameterError(
                f"Fault truncate={self.truncate!r} must be a fraction in [0, 1) of the body to send."
            )
        if self.delay < 0 or (self.times is not None and self.times < 0):
            raise InvalidParameterError(
                f"Fault delay={self.delay!r} and times={self.times!r} must be >= 0."
            )


@dataclass
class _Hit:
    method: str
    path: str
    status: int


class LoopbackServer:
    """Handle of a running loopback server: its URLs, fault rules and request log.

    Yielded by :func:`serve_stac_api`. Fault rules may be changed while it runs
    (``server.faults.append(Fault(...))``, ``server.faults.clear()``).
    """

    def __init__(self, root: Path, host: str, faults: Iterable[Fault], page_size: int | None):
        self.root = root
        self.host = host
        self.faults: list[Fault] = list(faults)
        self.page_size = page_size
        self.url = ""
        self._lock = threading.Lock()
        self._used: dict[int, int] = {}
        self._log: list[_Hit] = []

    @property
    def stac_url(self) -> str:
        """Root URL of the STAC API (``Client.open(server.stac_url)``)."""
        return self.url.rstrip("/") + _API

    def hits(self, pattern: str = "*", *, method: str | None = None) -> int:
        """Number of requests so far whose path matches ``pattern`` (and ``method``)."""
        with self._lock:
            return sum(
                1
                for h in self._log
                if fnmatch.fnmatchcase(h.path, pattern) and (method is None or h.method == method)
            )

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request so far, in order."""
        with self._lock:
            return [(h.method, h.path, h.status) for h in self._log]

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append(_Hit(method, path, status))

    def _fault_for(self, method: str, path: str, *, has_body: bool) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.methods is not None and method not in fault.methods:
                    continue
                if not fnmatch.fnmatchcase(path, fault.match):
                    continue
                if fault.truncate is not None and fault.status is None and not has_body:
                    continue  # nothing to truncate (HEAD, 416...)
                used = self._used.get(id(fault), 0)
                if fault.times is not None and used >= fault.times:
                    continue
                self._used[id(fault)] = used + 1
                return fault
        return None


# --------------------------------------------------------------------------------------------
# the minimal STAC API


def _parse_instant(value: str, *, end: bool = False) -> _dt.datetime | None:
    value = value.strip()
    if value in ("", ".."):
        return None
    try:
        if len(value) == 10:  # a date
            d = _dt.datetime.fromisoformat(value).replace(tzinfo=_dt.UTC)
            return d + _dt.timedelta(days=1, microseconds=-1) if end else d
        out = _dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"Invalid datetime {value!r}: use RFC 3339, e.g. 2020-01-01T00:00:00Z"
        ) from None
    return out if out.tzinfo else out.replace(tzinfo=_dt.UTC)


def _parse_interval(value: str) -> tuple[_dt.datetime | None, _dt.datetime | None]:
    if "/" in value:
        a, b = value.split("/", 1)
        return _parse_instant(a), _parse_instant(b, end=True)
    t = _parse_instant(value)
    if len(value.strip()) == 10:
        return t, _parse_instant(value, end=True)
    return t, t


def _item_interval(item: Mapping[str, Any]) -> tuple[_dt.datetime | None, _dt.datetime | None]:
    props = item.get("properties", {})
    if props.get("datetime"):
        t = _parse_instant(props["datetime"])
        return t, t
    return _parse_instant(props.get("start_datetime") or ".."), _parse_instant(
        props.get("end_datetime") or ".."
    )


_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "in": lambda a, b: a in b,
    "startsWith": lambda a, b: isinstance(a, str) and a.startswith(b),
}


class _BadRequest(Exception):
    pass


def _search_params(method: str, query: Mapping[str, list[str]], body: Any) -> dict[str, Any]:
    """Normalise GET query-string or POST body parameters into one dict."""
    if method == "POST":
        if not isinstance(body, dict):
            raise _BadRequest("The POST /search body must be a JSON object.")
        params = dict(body)
    else:
        params = {k: v[-1] for k, v in query.items()}
        for key in ("collections", "ids"):
            if key in params:
                params[key] = [s for s in str(params[key]).split(",") if s]
        if "bbox" in params:
            try:
                params["bbox"] = [float(v) for v in str(params["bbox"]).split(",")]
            except ValueError:
                raise _BadRequest(f"Invalid bbox {params['bbox']!r}.") from None
        for key in ("query", "intersects"):
            if key in params:
                try:
                    params[key] = json.loads(params[key])
                except ValueError:
                    raise _BadRequest(f"Invalid JSON in {key}={params[key]!r}.") from None
    unsupported = sorted(set(params) & {"filter", "filter-lang", "sortby", "fields"})
    if unsupported:
        raise _BadRequest(f"This test API does not support {unsupported!r}.")
    bbox = params.get("bbox")
    if bbox is not None and (len(bbox) != 4 or bbox[0] > bbox[2] or bbox[1] > bbox[3]):
        raise _BadRequest(f"Invalid bbox {bbox!r}: expected [west, south, east, north].")
    if bbox is not None and params.get("intersects") is not None:
        raise _BadRequest("Only one of bbox and intersects may be given.")
    try:
        params["limit"] = int(params.get("limit") or _DEFAULT_LIMIT)
        params["token"] = int(params.get("token") or 0)
    except (TypeError, ValueError):
        raise _BadRequest("limit and token must be integers.") from None
    if not 1 <= params["limit"] <= _MAX_LIMIT:
        raise _BadRequest(f"limit must be between 1 and {_MAX_LIMIT}.")
    if params.get("datetime"):
        try:
            params["_interval"] = _parse_interval(str(params["datetime"]))
        except ValueError as err:
            raise _BadRequest(str(err)) from None
    return params


def _matches(item: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    if params.get("collections") and item.get("collection") not in params["collections"]:
        return False
    if params.get("ids") and item.get("id") not in params["ids"]:
        return False
    bbox = params.get("bbox")
    if bbox is not None:
        ib = item.get("bbox")
        if ib is None or ib[0] > bbox[2] or ib[2] < bbox[0] or ib[1] > bbox[3] or ib[3] < bbox[1]:
            return False
    if params.get("intersects") is not None:
        import shapely.geometry

        try:
            geom = shapely.geometry.shape(params["intersects"])
        except Exception as err:
            raise _BadRequest(f"Invalid intersects geometry ({err}).") from None
        if item.get("geometry") is None or not shapely.geometry.shape(item["geometry"]).intersects(
            geom
        ):
            return False
    if "_interval" in params:
        lo, hi = params["_interval"]
        a, b = _item_interval(item)
        if (hi is not None and a is not None and a > hi) or (
            lo is not None and b is not None and b < lo
        ):
            return False
    for prop, ops in (params.get("query") or {}).items():
        if not isinstance(ops, dict):
            raise _BadRequest(f"query[{prop!r}] must be an object such as {{'lte': 10}}.")
        value = item.get("properties", {}).get(prop)
        for op, ref in ops.items():
            if op not in _OPS:
                raise _BadRequest(f"Unknown query operator {op!r}; use one of {sorted(_OPS)}.")
            try:
                if not _OPS[op](value, ref):
                    return False
            except TypeError:
                return False
    return True


class _Catalog:
    """Items and collections found in a folder (rescanned on every API request)."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.items: list[dict[str, Any]] = []
        self.collections: dict[str, dict[str, Any]] = {}
        for path in sorted(root.rglob("*.json")):
            try:
                if path.stat().st_size > 8_000_000:
                    continue
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict):
                continue
            rel = path.relative_to(root).as_posix()
            file_url = base_url + urllib.parse.quote(rel)
            if doc.get("type") == "Feature":
                for asset in (doc.get("assets") or {}).values():
                    if isinstance(asset, dict) and "href" in asset:
                        asset["href"] = urllib.parse.urljoin(file_url, asset["href"])
                self.items.append(doc)
            elif doc.get("type") == "Collection" and "id" in doc:
                self.collections[doc["id"]] = doc
        for item in self.items:  # collections referenced but not written: a minimal stand-in
            cid = item.get("collection")
            if cid and cid not in self.collections:
                self.collections[cid] = {
                    "type": "Collection",
                    "id": cid,
                    "stac_version": "1.0.0",
                    "description": f"{cid} (served by xfusion.testing.serve_stac_api)",
                    "license": "proprietary",
                    "extent": {
                        "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                        "temporal": {"interval": [[None, None]]},
                    },
                    "links": [],
                }
        self.items.sort(
            key=lambda d: (
                _item_interval(d)[0] or _dt.datetime.min.replace(tzinfo=_dt.UTC),
                str(d.get("id")),
            )
        )


def _landing(api: str) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "id": "xfusion-loopback",
        "stac_version": "1.0.0",
        "title": "xfusion loopback STAC API",
        "description": "A minimal STAC API over a local folder (xfusion.testing.serve_stac_api).",
        "conformsTo": list(_CONFORMANCE),
        "links": [
            {"rel": "self", "href": api, "type": "application/json"},
            {"rel": "root", "href": api, "type": "application/json"},
            {"rel": "conformance", "href": f"{api}/conformance", "type": "application/json"},
            {"rel": "data", "href": f"{api}/collections", "type": "application/json"},
            {"rel": "search", "href": f"{api}/search", "type": "application/geo+json",
             "method": "GET"},
            {"rel": "search", "href": f"{api}/search", "type": "application/geo+json",
             "method": "POST"},
        ],
    }


def _collection_doc(doc: Mapping[str, Any], api: str) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k != "links"}
    out["links"] = [
        {"rel": "self", "href": f"{api}/collections/{doc['id']}", "type": "application/json"},
        {"rel": "root", "href": api, "type": "application/json"},
        {"rel": "parent", "href": api, "type": "application/json"},
        {"rel": "items", "href": f"{api}/collections/{doc['id']}/items",
         "type": "application/geo+json"},
    ]
    return out


def _item_doc(doc: Mapping[str, Any], api: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(doc))
    cid = out.get("collection")
    links = [{"rel": "root", "href": api, "type": "application/json"}]
    if cid:
        base = f"{api}/collections/{cid}"
        links += [
            {"rel": "self", "href": f"{base}/items/{out['id']}", "type": "application/geo+json"},
            {"rel": "collection", "href": base, "type": "application/json"},
            {"rel": "parent", "href": base, "type": "application/json"},
        ]
    out["links"] = links
    return out


# --------------------------------------------------------------------------------------------
# the request handler


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support, the STAC API under /stac, and fault rules."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection is held

    _remaining: int | None = None
    _truncate_at: int | None = None
    _status: int = 200

    def __init__(self, *args: Any, state: LoopbackServer, stac: bool, **kwargs: Any) -> None:
        self.state = state
        self.stac = stac
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet (the base class logs every request to stderr)."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Log the request with its status BEFORE answering, so that a client that has its
        answer always finds its request in the log (no race with the server thread)."""
        self._status = code
        if not getattr(self, "_recorded", False):
            self._recorded = True
            self.state._record(self.command, self._path(), code)
        super().send_response(code, message)

    def _record_unanswered(self) -> None:
        if not getattr(self, "_recorded", False):
            self._recorded = True
            self.state._record(self.command, self._path(), self._status)

    # -- dispatch ----------------------------------------------------------------------------
    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def _apply_fault(self, *, has_body: bool) -> bool:
        """Apply a matching fault rule; return True when the request has been answered."""
        self._truncate_at = None
        fault = self.state._fault_for(self.command, self._path(), has_body=has_body)
        if fault is None:
            return False
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is not None:
            body = f"Injected fault: HTTP {fault.status}\n".encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if fault.status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return True
        if fault.truncate is not None:
            self._truncate_at = -1 if fault.truncate <= 0 else 0  # resolved once length is known
            self._truncate_fraction = float(fault.truncate)
        return False

    def do_GET(self) -> None:
        """Serve the STAC API or a file (possibly with an injected fault)."""
        self._status = 200
        self._recorded = False
        try:
            if self.stac and self._is_api():
                if not self._apply_fault(has_body=False):
                    self._api("GET", None)
            else:
                self._truncate_at = None
                super().do_GET()
        finally:
            self._record_unanswered()

    def do_HEAD(self) -> None:
        """Answer HEAD like GET without a body."""
        self._status = 200
        self._recorded = False
        try:
            if self.stac and self._is_api():
                self.send_error(405, "HEAD is not supported on the STAC API")
            else:
                super().do_HEAD()
        finally:
            self._record_unanswered()

    def do_POST(self) -> None:
        """``POST /stac/search``."""
        self._status = 200
        self._recorded = False
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not (self.stac and self._is_api()):
                self.send_error(405, "POST is only supported on the STAC API")
                return
            if self._apply_fault(has_body=False):
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._json(400, {"code": "BadRequest", "description": "Invalid JSON body."})
                return
            self._api("POST", body)
        finally:
            self._record_unanswered()

    # -- static files ------------------------------------------------------------------------
    def send_head(self) -> IO[bytes] | None:  # type: ignore[override]
        """Answer a GET/HEAD for a file, honouring a single byte range."""
        self._remaining = None
        if self._apply_fault(has_body=self.command == "GET"):
            return None
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()  # directories (listing/redirect) and 404s
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the base class after copyfile)
        except OSError:
            self.send_error(404, "File not found")
            return None
        try:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            header = self.headers.get("Range")
            parsed = _parse_range(header, size) if header else None
            if parsed == "unsatisfiable":
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                return None
            if isinstance(parsed, tuple):
                start, end = parsed
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                length = end - start + 1
                f.seek(start)
            else:
                self.send_response(200)
                length = size
            self._remaining = length
            if self._truncate_at is not None:
                self._truncate_at = int(length * self._truncate_fraction)
                self.close_connection = True
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            if self._truncate_at is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            return f
        except Exception:
            f.close()
            raise

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """Copy only the requested byte count (or the truncated part of it)."""
        remaining = self._remaining
        if self._truncate_at is not None and remaining is not None:
            remaining = min(remaining, self._truncate_at)
        if remaining is None:
            shutil.copyfileobj(source, outputfile)
            return
        while remaining > 0:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        if self._truncate_at is not None:
            outputfile.flush()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    # -- STAC API ----------------------------------------------------------------------------
    def _is_api(self) -> bool:
        p = self._path()
        return p == _API or p.startswith(_API + "/")

    def _json(self, status: int, doc: Any, content_type: str = "application/json") -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _api(self, method: str, body: Any) -> None:
        api = self.state.stac_url
        parts = urllib.parse.urlsplit(self.path)
        route = parts.path[len(_API) :].strip("/")
        segs = route.split("/") if route else []
        cat = _Catalog(self.state.root, self.state.url)
        if method == "GET" and not segs:
            self._json(200, _landing(api))
        elif method == "GET" and segs == ["conformance"]:
            self._json(200, {"conformsTo": list(_CONFORMANCE)})
        elif method == "GET" and segs == ["collections"]:
            self._json(
                200,
                {
                    "collections": [_collection_doc(c, api) for c in cat.collections.values()],
                    "links": [{"rel": "self", "href": f"{api}/collections"}],
                },
            )
        elif method == "GET" and len(segs) == 2 and segs[0] == "collections":
            doc = cat.collections.get(segs[1])
            if doc is None:
                self._json(404, {"code": "NotFoundError",
                                 "description": f"No collection with id '{segs[1]}' found!"})
            else:
                self._json(200, _collection_doc(doc, api))
        elif segs == ["search"] or (len(segs) == 3 and segs[0] == "collections"
                                    and segs[2] == "items" and method == "GET"):
            query = urllib.parse.parse_qs(parts.query)
            if segs[0] == "collections":
                if segs[1] not in cat.collections:
                    self._json(404, {"code": "NotFoundError",
                                     "description": f"No collection with id '{segs[1]}' found!"})
                    return
                query["collections"] = [segs[1]]
            try:
                params = _search_params(method, query, body)
                found = [d for d in cat.items if _matches(d, params)]
            except _BadRequest as err:
                self._json(400, {"code": "BadRequest", "description": str(err)})
                return
            limit = min(params["limit"], self.state.page_size or _MAX_LIMIT)
            start = params["token"]
            page = found[start : start + limit]
            links: list[dict[str, Any]] = [{"rel": "root", "href": api}]
            if start + limit < len(found):
                nxt = start + limit
                if method == "POST":
                    links.append({"rel": "next", "href": f"{api}/search", "method": "POST",
                                  "type": "application/geo+json",
                                  "body": {**body, "token": str(nxt)}, "merge": False})
                else:
                    q = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
                    q["token"] = str(nxt)
                    links.append({"rel": "next", "type": "application/geo+json",
                                  "href": f"{api}/{route}?{urllib.parse.urlencode(q)}"})
            self._json(
                200,
                {
                    "type": "FeatureCollection",
                    "features": [_item_doc(d, api) for d in page],
                    "links": links,
                    "numberMatched": len(found),
                    "numberReturned": len(page),
                    "context": {"matched": len(found), "returned": len(page), "limit": limit},
                },
                "application/geo+json",
            )
        else:
            self._json(404, {"code": "NotFoundError", "description": f"No route {parts.path}"})


class _QuietThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up mid-response; report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


@contextlib.contextmanager
def _serve(
    path: str | os.PathLike[str],
    *,
    host: str,
    faults: Iterable[Fault] | None,
    stac: bool,
    page_size: int | None,
    caller: str,
) -> Iterator[LoopbackServer]:
    root = Path(path).absolute()
    if not root.is_dir():
        raise InvalidParameterError(
            f"{caller}() needs an existing folder; {str(path)!r} is not one. Create it "
            "first, e.g. with write_stac_catalog(scene, directory)."
        )
    faults = list(faults or ())
    bad = [f for f in faults if not isinstance(f, Fault)]
    if bad:
        raise InvalidParameterError(
            f"faults= must hold xfusion.testing.Fault rules, found {type(bad[0]).__name__}. "
            "Use e.g. `faults=[Fault('*.tif', status=503, times=2)]`."
        )
    if page_size is not None and page_size < 1:
        raise InvalidParameterError(f"page_size={page_size!r} must be a positive int or None.")
    state = LoopbackServer(root, host, faults, page_size)
    handler = functools.partial(_Handler, directory=str(root), state=state, stac=stac)
    server = _QuietThreadingServer((host, 0), handler)
    state.url = f"http://{host}:{server.server_address[1]}/"
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"xfusion-{caller}-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def serve_directory(
    path: str | os.PathLike[str],
    /,
    *,
    host: str = "127.0.0.1",
    faults: Sequence[Fault] | None = None,
) -> Iterator[str]:
    """Serve a folder over HTTP on the loopback interface for the duration of a ``with`` block.

    A threaded server on a free port, with HTTP/1.1 keep-alive and proper single-range
    support (``206 Partial Content``, ``Content-Range``, ``Accept-Ranges: bytes``, ``416`` for
    unsatisfiable ranges), so GDAL's ``/vsicurl/`` can read COGs from it by range requests.
    Requests are not logged. The server shuts down when the block exits.

    The server runs in this process: read from it with GDAL's directory listing off
    (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``, which odc-stac and :func:`xfusion.load_cube`
    set). With listing on, rasterio holds the GIL while GDAL lists the folder over HTTP, and
    the server thread can never answer (a deadlock).

    Parameters
    ----------
    path : str or path-like
        Folder to serve.
    host : str, default "127.0.0.1"
        Interface to bind; keep the loopback default in tests.
    faults : sequence of Fault, optional
        Fault rules (HTTP errors, slow answers, truncated bodies) applied to matching
        requests. Use :func:`serve_stac_api` to change them while serving or count requests.

    Yields
    ------
    str
        Base URL with a trailing slash, e.g. ``"http://127.0.0.1:43125/"``.

    Raises
    ------
    InvalidParameterError
        When ``path`` is not an existing folder, or ``faults`` holds something else than
        :class:`Fault` rules.

    See Also
    --------
    serve_stac_api : the same server with a minimal STAC API and a request log.

    Examples
    --------
    >>> import urllib.request
    >>> with serve_directory(tmp_path) as url:  # doctest: +SKIP
    ...     urllib.request.urlopen(url + "catalog.json").read()
    """
    with _serve(
        path, host=host, faults=faults, stac=False, page_size=None, caller="serve_directory"
    ) as state:
        yield state.url


@contextlib.contextmanager
def serve_stac_api(
    path: str | os.PathLike[str],
    /,
    *,
    host: str = "127.0.0.1",
    faults: Sequence[Fault] | None = None,
    page_size: int | None = None,
) -> Iterator[LoopbackServer]:
    """Serve a folder and a minimal STAC API over it on loopback, for a ``with`` block.

    Static files are served as by :func:`serve_directory` (COGs by range requests). Under
    ``/stac`` a STAC API is built from the item and collection JSON files found in the folder
    (rescanned on every request, so items may be written after the server starts):

    * ``GET /stac``: landing page with ``conformsTo`` (core, collections, item-search, query)
      and ``search`` links for ``GET`` and ``POST``; ``GET /stac/conformance``;
    * ``GET /stac/collections`` and ``/stac/collections/{id}`` (``404`` for unknown ids);
    * ``GET``/``POST /stac/search`` with ``collections``, ``ids``, ``bbox``, ``intersects``,
      ``datetime`` (instants, ``a/b``, open ``../b`` or ``a/..`` intervals, items with
      ``start_datetime``/``end_datetime`` ranges), ``query`` (``eq``, ``neq``, ``lt``, ``lte``,
      ``gt``, ``gte``, ``in``, ``startsWith``) and ``limit``; results sorted by time, paged
      with ``next`` links (``token``); ``400`` with a JSON description for bad parameters.

    Relative asset hrefs are made absolute URLs on this server.

    Parameters
    ----------
    path : str or path-like
        Folder to serve (e.g. one written by :func:`write_stac_catalog`).
    host : str, default "127.0.0.1"
        Interface to bind.
    faults : sequence of Fault, optional
        Initial fault rules; change ``server.faults`` while serving.
    page_size : int, optional
        Cap on the items per page whatever ``limit`` asks (to exercise paging).

    Yields
    ------
    LoopbackServer
        ``.url`` (files, trailing slash), ``.stac_url`` (API root), ``.faults`` (mutable list),
        ``.hits(pattern)`` and ``.requests`` (the request log).

    Raises
    ------
    InvalidParameterError
        When ``path`` is not an existing folder or a fault rule is not a :class:`Fault`.

    Examples
    --------
    >>> with serve_stac_api(tmp_path) as server:  # doctest: +SKIP
    ...     cat = write_stac_catalog(scene, tmp_path, href_base=server.url)
    ...     items = xfusion.stac.search("landsat-c2-l2", url=server.stac_url)
    """
    with _serve(
        path, host=host, faults=faults, stac=True, page_size=page_size, caller="serve_stac_api"
    ) as state:
        yield state
