"""Reading STAC assets through odc-stac with retries, clear errors and a report of failures.

odc-stac reads pixels through a *reader driver*. :class:`ReportingDriver` wraps its rasterio
driver so that

* GDAL retries HTTP 429/5xx answers and timeouts itself (``GDAL_HTTP_MAX_RETRY`` and
  ``GDAL_HTTP_RETRY_DELAY``, set per load), and xfusion retries failed reads that GDAL does not
  (truncated bodies, dropped connections), after clearing GDAL's ``/vsicurl/`` cache of that URL
  (GDAL keeps the corrupt partial download otherwise, so a plain retry fails again);
* a read that still fails raises :class:`~xfusion.errors.AssetReadError` naming the STAC item,
  the asset and the URL (tokens redacted), with what to do about it;
* with ``fail_on_error=False`` the failure is logged (logger ``"xfusion.stac"``) and recorded in
  a :class:`LoadReport`, and the pixels of that item are left NaN, instead of odc-stac's
  silent skip.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import logging
import os
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from odc.loader._rio import RioDriver, rio_read

from xfusion.errors import AssetReadError

__all__ = ["FailedRead", "LoadReport", "ReportingDriver", "SourceInfo", "redact"]

log = logging.getLogger("xfusion.stac")

_PERMANENT = re.compile(
    r"does not exist|no such file|not recognized as|not a supported file format|"
    r"permission denied|http response code: (40[0-7]|409|41\d|4[2-9][0-8]|5\d\d)|"
    r"timed out|timeout",
    re.IGNORECASE,
)
_HTTP_CODE = re.compile(r"http response code: (\d{3})", re.IGNORECASE)


def redact(href: str) -> str:
    """``href`` without its query string (SAS tokens and signatures stay out of messages)."""
    try:
        parts = urllib.parse.urlsplit(href)
    except ValueError:
        return href
    if not parts.query:
        return href
    return urllib.parse.urlunsplit(parts._replace(query="<token>"))


@dataclass(frozen=True)
class SourceInfo:
    """Which item and asset a URL belongs to (for error messages) and its declared nodata."""

    item: str
    asset: str
    collection: str | None
    nodata: float | None = None


@dataclass(frozen=True)
class FailedRead:
    """One asset read that failed during a load with ``fail_on_error=False``."""

    item: str | None
    """STAC item id (None when the URL could not be traced back to an item)."""
    asset: str | None
    """Asset key."""
    collection: str | None
    """Collection id of the item."""
    href: str
    """The URL, without its query string."""
    error: str
    """The error (GDAL/rasterio message)."""


class LoadReport:
    """The reads that failed during loads with ``fail_on_error=False``.

    Pass one to :func:`xfusion.load_cube` / :func:`xfusion.load_pair` (``report=``): it is
    filled while the cube is *computed* (reads are lazy). The pixels of a failed item are NaN
    in the result. Recorded in the process that reads, so with the threaded (default) or
    synchronous dask schedulers; on a distributed cluster failures are logged by the workers.

    Examples
    --------
    >>> report = LoadReport()
    >>> cube = load_cube(items, bands="lst", fail_on_error=False, report=report)  # doctest: +SKIP
    >>> cube.compute()  # doctest: +SKIP
    >>> report.items  # doctest: +SKIP
    ['LC08_L2SP_047027_20201204_02_T1']
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[FailedRead] = []

    def add(self, failure: FailedRead) -> None:
        """Record one failure (thread-safe)."""
        with self._lock:
            self._failures.append(failure)

    @property
    def failures(self) -> tuple[FailedRead, ...]:
        """Every failed read, in the order they happened (one per item, asset and chunk)."""
        with self._lock:
            return tuple(self._failures)

    @property
    def items(self) -> list[str]:
        """Ids of the items with at least one failed read, sorted."""
        return sorted({f.item for f in self.failures if f.item is not None})

    def __len__(self) -> int:
        return len(self.failures)

    def __bool__(self) -> bool:
        return bool(self.failures)

    def __iter__(self) -> Iterator[FailedRead]:
        return iter(self.failures)

    def __repr__(self) -> str:
        pairs = sorted({(f.item, f.asset) for f in self.failures}, key=str)
        return f"LoadReport({len(self)} failed reads: {pairs!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"failures": self.failures}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._lock = threading.Lock()
        self._failures = list(state["failures"])


# --------------------------------------------------------------------------------------------
# GDAL /vsicurl/ cache


@functools.cache
def _gdal_lib() -> Any:
    """The GDAL shared library rasterio uses (ctypes handle), or None when not found."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as fh:  # Linux: the library actually loaded
            paths += [ln.split()[-1] for ln in fh if "libgdal" in ln and "/" in ln]
    except OSError:
        pass
    base = os.path.dirname(os.path.dirname(rasterio.__file__))
    for pattern in ("rasterio.libs/libgdal*", "rasterio/.dylibs/libgdal*", "rasterio.libs/gdal*"):
        paths += glob.glob(os.path.join(base, pattern))
    paths += glob.glob(os.path.join(sys.prefix, "lib", "libgdal.*"))
    for path in dict.fromkeys(paths):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.VSICurlPartialClearCache
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_char_p]
        fn.restype = None
        return lib
    return None


def _clear_gdal_cache(uri: str) -> None:
    """Forget what GDAL cached about ``uri`` (best effort)."""
    if not uri.startswith(("http://", "https://", "/vsicurl/")):
        return
    lib = _gdal_lib()
    if lib is None:
        return
    name = uri if uri.startswith("/vsi") else "/vsicurl/" + uri
    lib.VSICurlPartialClearCache(name.encode())


# --------------------------------------------------------------------------------------------
# one report per failed read: odc-loader logs a failed read at ERROR before raising it, and
# xfusion reports the same failure itself (AssetReadError, or a warning + LoadReport)

_READING = threading.local()


class _OwnReadsFilter(logging.Filter):
    """Drop odc-loader's record of a failed read made by :class:`_Reader` (reported by it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_READING, "active", False)


@functools.cache
def _install_log_filter() -> None:
    logging.getLogger("odc.loader._rio").addFilter(_OwnReadsFilter())


# --------------------------------------------------------------------------------------------
# the driver


def _retryable(err: BaseException) -> bool:
    """Failed reads worth retrying here; HTTP 429/5xx and timeouts GDAL has retried already."""
    return _PERMANENT.search(str(err)) is None


def _hint(err: BaseException, href: str, retries: int) -> str:
    msg = str(err).lower()
    code = _HTTP_CODE.search(msg)
    status = int(code.group(1)) if code else None
    if status == 404 or "does not exist" in msg or "no such file" in msg:
        return (
            "The file is not at this URL: the item may be outdated (search again, hrefs change "
            "when products are reprocessed) or the asset href is wrong."
        )
    if status in (401, 403, 409):
        from xfusion.stac._sign import is_blob_href

        if is_blob_href(href):
            return (
                "Access was refused: the SAS token is missing or expired. Sign just before "
                "loading (load_cube(..., sign='auto'), the default, or "
                "xfusion.stac.sign_items(items)) and compute within ~45 minutes; for long runs "
                "load and compute batch by batch."
            )
        return "Access was refused: check the credentials for this host."
    what = f"after {retries} retries" if retries else "with retries=0"
    return (
        f"The read still failed {what}. Try again later or raise retries=, or pass "
        "fail_on_error=False to skip unreadable items (listed in a LoadReport passed as report=)."
    )


class ReportingDriver(RioDriver):
    """odc-loader rasterio driver with retries, item/asset error messages and a failure report."""

    def __init__(
        self,
        md_parser: Any,
        aux_reader: Any,
        *,
        sources: Mapping[str, SourceInfo],
        fail_on_error: bool,
        report: LoadReport | None,
        retries: int,
        retry_delay: float,
        http_timeout: float | None,
    ) -> None:
        super().__init__(md_parser=md_parser, aux_reader=aux_reader)
        self.sources = dict(sources)
        self.fail_on_error = bool(fail_on_error)
        self.report = report
        self.retries = int(retries)
        self.retry_delay = float(retry_delay)
        self.http_timeout = http_timeout

    def capture_env(self) -> dict[str, Any]:
        """GDAL settings for the reads: the odc-stac ones plus this load's retry policy."""
        env = dict(super().capture_env())
        env.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
        env["GDAL_HTTP_MAX_RETRY"] = str(self.retries)
        env["GDAL_HTTP_RETRY_DELAY"] = repr(self.retry_delay)
        if self.http_timeout is not None:
            env["GDAL_HTTP_TIMEOUT"] = str(max(1, round(self.http_timeout)))
        return env

    def open(self, src: Any, ctx: Any) -> _Reader:
        """A reader of one asset."""
        return _Reader(self, src)


class _Reader:
    def __init__(self, driver: ReportingDriver, src: Any) -> None:
        self._driver = driver
        self._src = src

    def read(
        self,
        cfg: Any,
        dst_geobox: Any,
        *,
        dst: np.ndarray | None = None,
        selection: Any = None,
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        drv, src = self._driver, self._src
        info = drv.sources.get(src.uri)
        patch: dict[str, Any] = {"fail_on_error": True}
        if cfg.src_nodata_fallback is None and info is not None and info.nodata is not None:
            patch["src_nodata_fallback"] = info.nodata  # files without a nodata tag
        cfg1 = cfg.patch(**patch)
        _install_log_filter()
        attempt = 0
        while True:
            try:
                _READING.active = True
                try:
                    return rio_read(src, cfg1, dst_geobox, dst=dst, selection=selection)
                finally:
                    _READING.active = False
            except (rasterio.errors.RasterioError, OSError) as err:
                if attempt < drv.retries and _retryable(err):
                    attempt += 1
                    _clear_gdal_cache(src.uri)
                    time.sleep(drv.retry_delay * 2 ** (attempt - 1))
                    continue
                return self._failed(err, cfg, dst)

    def _failed(
        self, err: BaseException, cfg: Any, dst: np.ndarray | None
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        drv, src = self._driver, self._src
        info = drv.sources.get(src.uri)
        href = redact(src.uri)
        if info is not None:
            where = (
                f"asset {info.asset!r} of item {info.item!r} (collection {info.collection!r})"
            )
        else:
            where = "an asset"
        _clear_gdal_cache(src.uri)  # a later retry (e.g. of a whole tile) must read afresh
        if drv.fail_on_error:
            raise AssetReadError(
                f"Could not read {where} from {href!r}: {err}. {_hint(err, src.uri, drv.retries)}"
            ) from err
        failure = FailedRead(
            item=None if info is None else info.item,
            asset=None if info is None else info.asset,
            collection=None if info is None else info.collection,
            href=href,
            error=str(err),
        )
        if drv.report is not None:
            drv.report.add(failure)
        log.warning(
            "Skipped %s from %r (read failed: %s); its pixels are NaN in the result.",
            where, href, err,
        )
        if dst is not None:
            return np.s_[0:0, 0:0], dst[0:0, 0:0]
        return np.s_[0:0, 0:0], np.ndarray((0, 0), dtype=cfg.dtype)
