"""A quiet, threaded loopback HTTP server with Range support, for testing remote reads."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from xfusion.errors import InvalidParameterError

__all__ = ["serve_directory"]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_CHUNK = 1 << 16


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


class _RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=...`` support (206 / 416), keep-alive, no logging."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection is held

    _remaining: int | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet (the base class logs every request to stderr)."""

    def send_head(self) -> IO[bytes] | None:  # type: ignore[override]
        """Answer a GET/HEAD for a file, honouring a single byte range."""
        self._remaining = None
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
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            self.end_headers()
            return f
        except Exception:
            f.close()
            raise

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """Copy only the requested byte count (the whole file when no range was asked)."""
        remaining = self._remaining
        if remaining is None:
            shutil.copyfileobj(source, outputfile)
            return
        while remaining > 0:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)


class _QuietThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up mid-response; report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_directory(path: str | os.PathLike[str], /, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve a folder over HTTP on the loopback interface for the duration of a ``with`` block.

    A threaded server on a free port, with HTTP/1.1 keep-alive and proper single-range
    support (``206 Partial Content``, ``Content-Range``, ``Accept-Ranges: bytes``, ``416`` for
    unsatisfiable ranges), so GDAL's ``/vsicurl/`` can read COGs from it by range requests.
    Requests are not logged. The server shuts down when the block exits.

    Parameters
    ----------
    path : str or path-like
        Folder to serve.
    host : str, default "127.0.0.1"
        Interface to bind; keep the loopback default in tests.

    Yields
    ------
    str
        Base URL with a trailing slash, e.g. ``"http://127.0.0.1:43125/"``.

    Raises
    ------
    InvalidParameterError
        When ``path`` is not an existing folder.

    Examples
    --------
    >>> import urllib.request
    >>> with serve_directory(tmp_path) as url:  # doctest: +SKIP
    ...     urllib.request.urlopen(url + "catalog.json").read()
    """
    root = Path(path).absolute()
    if not root.is_dir():
        raise InvalidParameterError(
            f"serve_directory() needs an existing folder; {str(path)!r} is not one. Create it "
            "first, e.g. with write_stac_catalog(scene, directory)."
        )
    handler = functools.partial(_RangeRequestHandler, directory=str(root))
    server = _QuietThreadingServer((host, 0), handler)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"xfusion-serve-directory-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
