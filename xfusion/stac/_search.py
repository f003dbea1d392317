"""STAC API search: the Planetary Computer by default, any STAC API by URL."""

from __future__ import annotations

import datetime as _dt
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xfusion.errors import (
    EmptySearchError,
    InvalidParameterError,
    StacApiError,
    UnknownCollectionError,
)
from xfusion.stac._sign import PC_STAC_URL, require_subscription_key

__all__ = ["search"]


STAC_URL_ENV = "XFUSION_STAC_URL"
"""Environment variable naming the STAC API searched when no ``url=`` is given."""


def default_url(url: str | None = None) -> str:
    """``url``, else ``$XFUSION_STAC_URL``, else the Planetary Computer STAC API."""
    import os

    return url or os.environ.get(STAC_URL_ENV) or PC_STAC_URL


def _is_pc(url: str) -> bool:
    return urllib.parse.urlsplit(url).netloc.lower() == "planetarycomputer.microsoft.com"


def _time_value(value: Any, what: str) -> str | None:
    """A date-like -> RFC 3339 string (``YYYY-MM-DD`` for dates); None/".." -> open end."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "..")):
        return None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d{8}|A?\d{4}-?\d{3}", text):  # YYYYMMDD, YYYY-DDD: as elsewhere
            from xfusion._dates import parse_date

            return str(parse_date(text, what=f"time {what}"))[:10]
        return text
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"time {what} {value!r} is not a date. Give 'YYYY-MM-DD' strings, datetime objects "
            "or numpy.datetime64 values, e.g. time=('2021-06-01', '2021-08-31')."
        ) from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        return ts.strftime("%Y-%m-%d")
    if isinstance(value, np.datetime64) and np.datetime_data(value.dtype)[0] in ("D", "M", "Y"):
        return ts.strftime("%Y-%m-%d")
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_time(time: Any) -> str | None:
    """``time=`` of search/load_pair -> a STAC ``datetime`` parameter (or None)."""
    if time is None:
        return None
    if isinstance(time, str):
        text = time.strip()
        if "/" in text:
            a, b = (p.strip() for p in text.split("/", 1))
            start, end = _time_value(a, "start"), _time_value(b, "end")
        else:
            return text
    elif isinstance(time, Sequence) and not isinstance(time, (str, bytes)):
        if len(time) != 2:
            raise InvalidParameterError(
                f"time={time!r} must be a (start, end) pair, a 'start/end' string or one date."
            )
        start, end = _time_value(time[0], "start"), _time_value(time[1], "end")
    else:
        start = end = _time_value(time, "value")
        if start is not None and len(start) == 10:
            return start
    if start is not None and end is not None:
        import pandas as pd

        try:
            t0, t1 = pd.Timestamp(start.rstrip("Z")), pd.Timestamp(end.rstrip("Z"))
        except ValueError:
            raise InvalidParameterError(
                f"time={time!r} is not understood; use e.g. ('2021-06-01', '2021-08-31')."
            ) from None
        if t0 > t1:
            raise InvalidParameterError(
                f"time={time!r} ends before it starts ({start} > {end}). Swap the dates."
            )
    return f"{start or '..'}/{end or '..'}"


def _check_bbox(bbox: Any) -> list[float]:
    from xfusion.stac._items import _check_bbox as check

    return list(check(bbox))


def _query(
    collections: list[str],
    query: Mapping[str, Any] | None,
    max_cloud: float | None,
    platform: Any,
) -> dict[str, Any] | None:
    from xfusion.stac.presets import preset_for_collection

    q: dict[str, Any] = {}
    if query is not None:
        if not isinstance(query, Mapping):
            raise InvalidParameterError(
                f"query={query!r} must be a mapping such as {{'eo:cloud_cover': {{'lt': 20}}}}."
            )
        q = {str(k): dict(v) if isinstance(v, Mapping) else {"eq": v} for k, v in query.items()}
    if max_cloud is not None:
        try:
            mc = float(max_cloud)
        except (TypeError, ValueError):
            mc = float("nan")
        if not 0.0 <= mc <= 100.0:
            raise InvalidParameterError(
                f"max_cloud={max_cloud!r} must be a cloud cover percentage in [0, 100]."
            )
        props = set()
        for c in collections:
            p = preset_for_collection(c)
            if p is not None and p.cloud_property is None:
                raise InvalidParameterError(
                    f"max_cloud= cannot be used with {c!r}: its items have no cloud cover "
                    "property (it is a radar product). Drop max_cloud."
                )
            props.add("eo:cloud_cover" if p is None else p.cloud_property)
        for prop in props:
            q.setdefault(prop, {})["lte"] = mc
    if platform is not None:
        if isinstance(platform, str):
            q["platform"] = {"eq": platform}
        else:
            q["platform"] = {"in": list(platform)}
    return q or None


def _collection_ids(client: Any) -> list[str]:
    try:
        return sorted(c.id for c in client.get_collections())
    except Exception:
        return []


def _has_collection(client: Any, cid: str) -> bool | None:
    """True/False when the API says; None when it cannot tell."""
    from pystac_client.exceptions import APIError

    try:
        return client.get_collection(cid) is not None
    except APIError as err:
        if getattr(err, "status_code", None) == 404:
            return False
        return None
    except Exception:
        return None


def _unknown(client: Any, collections: list[str], url: str) -> None:
    import difflib

    missing = [c for c in collections if _has_collection(client, c) is False]
    if not missing:
        return
    available = _collection_ids(client)
    close = difflib.get_close_matches(missing[0], available, n=3)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    shown = available if len(available) <= 60 else [*available[:60], "..."]
    raise UnknownCollectionError(
        f"Unknown collection {missing[0]!r} at {url}.{hint} The API offers {len(available)} "
        f"collections: {shown!r}."
    )


def search(
    collection: str | Sequence[str],
    /,
    *,
    bbox: Sequence[float] | None = None,
    intersects: Any = None,
    time: Any = None,
    query: Mapping[str, Any] | None = None,
    max_cloud: float | None = None,
    platform: str | Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    limit: int = 100,
    max_items: int | None = None,
    url: str | None = None,
    sign: bool | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
    retries: int = 3,
    retry_delay: float = 1.0,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Any:
    """Search a STAC API for items: the Planetary Computer by default, any API by URL.

    Parameters
    ----------
    collection : str or sequence of str
        Collection id(s), e.g. ``"landsat-c2-l2"``, ``"modis-11A1-061"``.
    bbox : sequence of 4 floats, optional
        ``(west, south, east, north)`` in degrees. Not with ``intersects``.
    intersects : GeoJSON-like geometry, optional
        Area of interest (a dict, a shapely geometry or anything with ``__geo_interface__``).
    time : str, date-like or (start, end), optional
        ``"2021-06-01/2021-08-31"``, ``("2021-06-01", "2021-08-31")`` (``None`` for an open
        end), one date-like for one day, or a STAC datetime string such as ``"2021-06"``.
    query : mapping, optional
        STAC API query extension, e.g. ``{"landsat:wrs_row": {"eq": "027"}}``.
    max_cloud : float, optional
        Keep items with scene cloud cover ``<= max_cloud`` percent (the preset's cloud
        property, ``eo:cloud_cover``); merged into ``query``.
    platform : str or sequence of str, optional
        Keep items of these platforms (``"terra"``/``"aqua"`` for MODIS, ``"landsat-8"``...).
    ids : sequence of str, optional
        Item ids.
    limit : int, default 100
        Page size asked of the API (pages are followed automatically).
    max_items : int, optional
        Stop after this many items.
    url : str, optional
        STAC API root URL; default the environment variable ``XFUSION_STAC_URL`` when set
        (a mirror, a private API, a local test server), else the Planetary Computer
        (``https://planetarycomputer.microsoft.com/api/stac/v1``).
    sign : bool, optional
        Sign asset URLs with ``planetary_computer.sign_inplace`` (pystac-client modifier).
        Default: True for the Planetary Computer, False for other APIs. Tokens expire after
        about 45 minutes; :func:`xfusion.load_cube` re-signs before loading anyway.
    headers : mapping, optional
        Extra HTTP headers for the API.
    timeout : float, optional
        Seconds before an API request times out.
    retries : int, default 3
        Retries of API requests answered with HTTP 429/5xx or failing to connect.
    retry_delay : float, default 1.0
        Backoff factor of those retries in seconds (doubling; ``Retry-After`` is honoured).
    keep : callable, optional
        A predicate on each item's JSON (a dict) deciding whether to keep it, applied before
        the item is parsed into a :class:`pystac.Item` (cheap: long searches return
        thousands of MODIS items of which a job may need a few dates).

    Returns
    -------
    pystac.ItemCollection
        The items, sorted by time (then id).

    Raises
    ------
    InvalidParameterError
        Bad ``bbox``, ``time``, ``query`` or ``max_cloud``, or ``bbox`` with ``intersects``.
    UnknownCollectionError
        A collection the API does not offer (the message lists those it does).
    EmptySearchError
        Nothing matched (the message repeats the search and suggests how to widen it).
    SigningError
        Signing requested for a collection that needs a Planetary Computer account
        (``sentinel-1-rtc``) and no subscription key is configured.
    StacApiError
        The API cannot be reached or answers with an error.

    Examples
    --------
    >>> items = search("landsat-c2-l2", bbox=(146.0, -34.9, 146.2, -34.7),
    ...                time=("2016-02-01", "2016-03-31"), max_cloud=20)  # doctest: +SKIP
    >>> cube = xfusion.load_cube(items, preset="landsat-c2-l2", bands="lst")  # doctest: +SKIP
    """
    import pystac
    import requests
    from pystac_client import Client
    from pystac_client.exceptions import APIError, ParametersError

    collections = [collection] if isinstance(collection, str) else list(collection)
    if not collections or not all(isinstance(c, str) and c for c in collections):
        raise InvalidParameterError(
            f"collection={collection!r} must be a collection id or a list of them, e.g. "
            "'landsat-c2-l2'."
        )
    if bbox is not None and intersects is not None:
        raise InvalidParameterError("Pass either bbox= or intersects=, not both.")
    bbox_arg = None if bbox is None else _check_bbox(bbox)
    if intersects is not None and not isinstance(intersects, Mapping):
        geo = getattr(intersects, "__geo_interface__", None)
        if geo is None:
            raise InvalidParameterError(
                f"intersects={type(intersects).__name__} is not a geometry; pass a GeoJSON "
                "dict, a shapely geometry, or use bbox=."
            )
        intersects = dict(geo)
    datetime = normalize_time(time)
    q = _query(collections, query, max_cloud, platform)
    if int(limit) < 1:
        raise InvalidParameterError(f"limit={limit!r} must be a positive int.")
    api = default_url(url)
    do_sign = _is_pc(api) if sign is None else bool(sign)
    modifier = None
    if do_sign:
        import planetary_computer

        from xfusion.stac.presets import preset_for_collection

        for c in collections:
            p = preset_for_collection(c)
            if p is not None and p.requires_account:
                require_subscription_key(
                    c, what="searching with sign=True (signing the asset URLs)"
                )
        modifier = planetary_computer.sign_inplace
    what = (
        f"collections {collections!r}, bbox {None if bbox_arg is None else tuple(bbox_arg)!r}"
        f"{', intersects=<geometry>' if intersects is not None else ''}, time {datetime!r}, "
        f"query {q!r}"
    )
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    if int(retries) < 0 or float(retry_delay) < 0:
        raise InvalidParameterError(
            f"retries={retries!r} and retry_delay={retry_delay!r} must be >= 0."
        )
    policy = Retry(
        total=int(retries),
        backoff_factor=float(retry_delay),
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # POST /search is a read: retry it too
        raise_on_status=False,  # the last answer's status goes into the error message
    )
    try:
        client = Client.open(
            api, headers=dict(headers or {}), modifier=modifier, timeout=timeout,
            stac_io=StacApiIO(max_retries=policy),
        )
    except (APIError, requests.RequestException, OSError, pystac.STACError) as err:
        raise StacApiError(
            f"Could not open the STAC API at {api!r} ({type(err).__name__}: {err}). Check the "
            "URL (the API root, e.g. .../api/stac/v1) and the network."
        ) from err
    try:
        found = client.search(
            collections=collections,
            bbox=bbox_arg,
            intersects=intersects,
            datetime=datetime,
            query=q,
            ids=list(ids) if ids is not None else None,
            limit=int(limit),
            max_items=max_items,
        )
        if keep is None:
            items = list(found.items())
        else:  # filter on the JSON: only the items kept are parsed into pystac objects
            items = [
                pystac.Item.from_dict(d, root=client, preserve_dict=False)
                for d in found.items_as_dicts()
                if keep(d)
            ]
    except ParametersError as err:
        raise InvalidParameterError(f"Invalid search parameters ({err}) for {what}.") from err
    except APIError as err:
        _unknown(client, collections, api)
        status = getattr(err, "status_code", None)
        raise StacApiError(
            f"The STAC API at {api!r} answered HTTP {status} to the search ({what}): "
            f"{str(err)[:500]}"
        ) from err
    except (requests.RequestException, OSError) as err:
        raise StacApiError(
            f"The search at {api!r} failed ({type(err).__name__}: {err}) for {what}. Check the "
            "network and retry."
        ) from err
    if not items:
        _unknown(client, collections, api)
        hints = ["widen the time range", "enlarge the bbox"]
        if keep is not None:
            hints.append("check which items the filter keeps")
        if max_cloud is not None:
            hints.append(f"raise max_cloud (now {max_cloud})")
        if platform is not None:
            hints.append(f"drop platform={platform!r}")
        if query is not None:
            hints.append("relax query=")
        raise EmptySearchError(
            f"The search at {api} found no items: {what}. To find some: {', '.join(hints)}; "
            "check that the collection covers this place and period."
        )

    def when(it: Any) -> str:
        p = it.properties
        return str(p.get("datetime") or p.get("start_datetime") or "")

    items.sort(key=lambda it: (when(it), it.id))
    return pystac.ItemCollection(items, clone_items=False)
