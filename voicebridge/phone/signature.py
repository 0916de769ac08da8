"""Twilio's request signature (``X-Twilio-Signature``), as Twilio documents it.

"Secure webhooks" (twilio.com/docs/usage/webhooks/webhooks-security): the signature is the
base64 HMAC-SHA1, keyed with the account's auth token, of the full URL Twilio requested
followed by every POST parameter as ``name`` + ``value``, sorted by name (a name sent twice
contributes each value, sorted). Twilio's own validators also accept the URL with the
default port added or removed, since proxies differ in how they pass it on; so does
:func:`valid`. The published test vectors of ``twilio-python``
(``tests/unit/test_request_validator.py``) are this module's tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"https": 443, "http": 80}


def compute(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The signature Twilio sends for a POST of ``params`` to ``url``."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def valid(auth_token: str, signature: str, url: str, params: Iterable[tuple[str, str]]) -> bool:
    """Whether ``signature`` is Twilio's for this request (constant-time comparison).

    Checked against the URL as given, with its default port removed and with it added.
    """
    pairs = list(params)
    given = signature.encode("utf-8", "surrogatepass")
    ok = False
    for candidate in _url_variants(url):
        # Every variant is compared, so timing does not tell which one matched.
        ok |= hmac.compare_digest(compute(auth_token, candidate, pairs).encode(), given)
    return ok and bool(signature)


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    without = urlunsplit(parts._replace(netloc=prefix + host))
    variants = [url, without]
    if default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return list(dict.fromkeys(variants))
