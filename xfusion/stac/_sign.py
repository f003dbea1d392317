"""Planetary Computer signing: SAS tokens on Azure blob URLs, re-signed before each load.

Planetary Computer assets live in Azure Blob Storage; reading them needs a SAS token in the
URL's query string. Anonymous tokens last about 45 minutes, so a long run must sign again just
before each batch is loaded (the token is baked into the dask graph when it is built; odc-stac
calls ``patch_url`` at graph-build time). :func:`sign_items` does that: it signs unsigned blob
URLs and re-signs those whose token expires within ``min_ttl`` seconds, leaving every other URL
untouched (no network access for local files or other hosts).
"""

from __future__ import annotations

import datetime as _dt
import os
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from xfusion.errors import InvalidParameterError, SigningError, StacApiError

__all__ = [
    "PC_STAC_URL",
    "has_subscription_key",
    "is_blob_href",
    "require_subscription_key",
    "sign_href",
    "sign_items",
    "token_expiry",
]

PC_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
"""The Planetary Computer STAC API (the default of :func:`xfusion.stac.search`)."""

_BLOB_DOMAIN = ".blob.core.windows.net"
_PUBLIC_ACCOUNTS = {"ai4edatasetspublicassets"}  # thumbnails etc.: never signed
_SAS_KEYS = {
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "si", "sip", "skoid", "sktid",
    "skt", "ske", "sks", "skv", "sdd", "saoid", "suoid", "scid", "ses", "rscc", "rscd",
    "rsce", "rscl", "rsct",
}
DEFAULT_MIN_TTL = 600.0
"""Seconds a token must still be valid for; older ones are renewed (10 minutes)."""
_KEY_HELP = (
    "Set the environment variable PC_SDK_SUBSCRIPTION_KEY=<your key> (or run "
    "`planetarycomputer configure`, or call `planetary_computer.set_subscription_key(key)`); "
    "request a key at https://planetarycomputer.microsoft.com/account/request."
)


def is_blob_href(href: str, /) -> bool:
    """Whether ``href`` is an Azure blob URL that needs a SAS token (Planetary Computer data)."""
    try:
        host = urllib.parse.urlsplit(href).netloc.lower()
    except ValueError:
        return False
    if not host.endswith(_BLOB_DOMAIN):
        return False
    return host[: -len(_BLOB_DOMAIN)] not in _PUBLIC_ACCOUNTS


def token_expiry(href: str, /) -> _dt.datetime | None:
    """Expiry (``se=``) of the SAS token in ``href``, as an aware UTC datetime; None if unsigned."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
    if "se" not in query:
        return None
    value = query["se"][-1]
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return _dt.datetime.min.replace(tzinfo=_dt.UTC)  # unreadable: treat as expired
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def _strip_sas(href: str) -> str:
    parts = urllib.parse.urlsplit(href)
    kept = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k not in _SAS_KEYS]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))


def has_subscription_key() -> bool:
    """Whether a Planetary Computer subscription key is configured (env or settings file)."""
    if os.environ.get("PC_SDK_SUBSCRIPTION_KEY"):
        return True
    try:
        from planetary_computer.settings import Settings

        return bool(Settings.get().subscription_key)
    except Exception:
        return False


def require_subscription_key(collection: str, /, *, what: str = "signing its assets") -> None:
    """Raise :class:`SigningError` when ``collection`` needs a key and none is configured."""
    if has_subscription_key():
        return
    raise SigningError(
        f"The Planetary Computer collection {collection!r} requires an account: "
        f"{what} needs a subscription key, and none is configured "
        f"(PC_SDK_SUBSCRIPTION_KEY is not set). {_KEY_HELP}"
    )


def _needs(href: str, force: bool, min_ttl: float) -> bool:
    if not is_blob_href(href):
        return False
    if force:
        return True
    exp = token_expiry(href)
    if exp is None:
        return True
    return (exp - _dt.datetime.now(_dt.UTC)).total_seconds() < min_ttl


def sign_href(href: str, /, *, force: bool = False, min_ttl: float = DEFAULT_MIN_TTL) -> str:
    """Return ``href`` with a valid Planetary Computer SAS token (other URLs unchanged).

    Parameters
    ----------
    href : str
        An asset URL.
    force : bool, default False
        Re-sign even when the current token is still valid for ``min_ttl`` seconds.
    min_ttl : float, default 600
        Renew tokens that expire within this many seconds (cached tokens too).

    Returns
    -------
    str
        The signed URL; non-blob URLs (local files, other hosts) are returned unchanged
        without any network access.

    Raises
    ------
    SigningError
        When the token service refuses (HTTP 401/403: the collection needs an account).
    StacApiError
        When the token service cannot be reached.
    """
    if not _needs(href, force, min_ttl):
        return href
    from planetary_computer import sas
    from planetary_computer.settings import Settings
    from planetary_computer.utils import parse_blob_url

    base = _strip_sas(href)
    parsed = urllib.parse.urlparse(base)
    account, container = parse_blob_url(parsed)
    cache_key = f"{Settings.get().sas_url}/{account}/{container}"
    cached = sas.TOKEN_CACHE.get(cache_key)
    if cached is not None and cached.ttl() < min_ttl:
        sas.TOKEN_CACHE.pop(cache_key, None)  # renew now rather than expire mid-batch
    try:
        token = sas.get_token(account, container, retry_total=3, retry_backoff_factor=0.5)
    except Exception as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise SigningError(
                f"The Planetary Computer refused a SAS token for {account}/{container} (HTTP "
                f"{status}) while signing {base!r}: this data needs an account. {_KEY_HELP}"
            ) from err
        raise StacApiError(
            f"Could not get a Planetary Computer SAS token for {account}/{container} "
            f"({type(err).__name__}: {err}) while signing {base!r}. Check the network, or "
            "pass sign=False to keep the URLs as they are."
        ) from err
    sep = "&" if parsed.query else "?"
    return f"{base}{sep}{token.token}"


def sign_items(
    items: Iterable[Any],
    /,
    *,
    force: bool = False,
    min_ttl: float = DEFAULT_MIN_TTL,
    signer: Callable[[str], str] | None = None,
    assets: Iterable[str] | None = None,
) -> list[Any]:
    """Return copies of STAC items whose blob asset URLs carry fresh SAS tokens.

    Call it just before each batch is loaded in long runs (tokens are read into the dask
    graph when it is built, and anonymous tokens expire after about 45 minutes)::

        for batch in tiles:
            items = xfusion.stac.sign_items(items)          # fresh tokens for this batch
            cube = xfusion.load_cube(items, ..., geobox=batch.geobox, sign=False)
            xfusion.io.to_zarr(cube, store, region=...)      # compute now, not later

    :func:`xfusion.load_cube` and :func:`xfusion.load_pair` do this by default
    (``sign="auto"``), so re-running them per batch is enough.

    Parameters
    ----------
    items : iterable of pystac.Item or dict
        The items (not modified).
    force : bool, default False
        Re-sign every blob URL, even when its token is still valid.
    min_ttl : float, default 600
        Renew tokens that expire within this many seconds.
    signer : callable, optional
        ``href -> href`` used instead of the Planetary Computer signer, for every asset URL
        (e.g. another cloud's presigning).
    assets : iterable of str, optional
        Only sign these asset keys (default: all assets).

    Returns
    -------
    list of pystac.Item
        Signed copies, in the same order.

    Raises
    ------
    SigningError
        For a collection that needs a Planetary Computer account (``sentinel-1-rtc``) when
        no subscription key is configured, or when the token service refuses.
    """
    import pystac

    from xfusion.stac.presets import preset_for_collection

    if min_ttl < 0:
        raise InvalidParameterError(f"min_ttl={min_ttl!r} must be >= 0 seconds.")
    keys = None if assets is None else set(assets)
    out = []
    checked: set[str] = set()
    for item in items:
        if isinstance(item, Mapping):
            item = pystac.Item.from_dict(dict(item))
        elif not isinstance(item, pystac.Item):
            raise InvalidParameterError(
                f"sign_items() expects pystac.Item objects, found {type(item).__name__}."
            )
        new = item.clone()
        todo = [a for k, a in new.assets.items() if keys is None or k in keys]
        if signer is not None:
            for asset in todo:
                asset.href = signer(asset.href)
        elif any(_needs(a.href, force, min_ttl) for a in todo):
            cid = new.collection_id or ""
            preset = preset_for_collection(cid)
            if preset is not None and preset.requires_account and cid not in checked:
                require_subscription_key(cid)
                checked.add(cid)
            for asset in todo:
                asset.href = sign_href(asset.href, force=force, min_ttl=min_ttl)
        out.append(new)
    return out
