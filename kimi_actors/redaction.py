"""The one redactor every string leaving the library passes through.

It knows two things: the secrets registered with it (every Supervisor registers its API key),
and the shapes a credential takes in text a server or proxy may echo back: ``Bearer <token>``,
``Authorization: ...``, ``api_key=...``, ``sk-...`` keys, and the password of a URL's userinfo.
Exception messages, notes and reprs (errors.py), log events (observe.py), batch output lines
and printed commands (batch/) all call :func:`redact_text`, so a key is masked whatever path it
took, even when the key was never registered (a key pasted into ``base_url``).

It is pure apart from the process-wide registry, which only ever grows: a key registered once
stays masked for the life of the process, which is the safe direction.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_bytes", "redact_text", "redact_url", "register_secret"]

REDACTED = "[redacted]"
#: Registered secrets shorter than this are ignored: they would mask ordinary words.
_MIN_SECRET = 8

_secrets: tuple[str, ...] = ()
_lock = threading.Lock()

_SHAPES = re.compile(
    r"(?P<lead>(?i:bearer)\s+|(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?:(?i:bearer|basic|token)\s+)?"
    r"|(?i:api[_-]?key|access[_-]?token|secret)[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\s\"',;&}<>]{4,})"
    r"|\bsk-[A-Za-z0-9_\-]{16,}"
)
_SHAPE_HINT = re.compile(r"(?i)bearer|authorization|api[_-]?key|access[_-]?token|secret|sk-")


def register_secret(secret: str | None) -> None:
    """Mask ``secret`` wherever it appears from now on."""
    global _secrets
    if secret and len(secret) >= _MIN_SECRET and secret not in _secrets:
        with _lock:
            # Longest first, so a secret that contains another is masked whole.
            _secrets = tuple(sorted({*_secrets, secret}, key=len, reverse=True))


def _mask_shape(match: re.Match[str]) -> str:
    lead = match["lead"]
    return REDACTED if lead is None else lead + REDACTED


def redact_text(text: str) -> str:
    """``text`` with every registered secret and every credential shape masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _SHAPE_HINT.search(text) is not None:
        text = _SHAPES.sub(_mask_shape, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """:func:`redact_text` for raw bytes (an error body), keeping bytes that are not UTF-8."""
    text = data.decode("utf-8", errors="surrogateescape")
    redacted = redact_text(text)
    return data if redacted == text else redacted.encode("utf-8", errors="surrogateescape")


def redact_url(url: str) -> str:
    """``url`` safe to print: the userinfo's password masked, every query value masked, and
    :func:`redact_text` over the rest (a key pasted into the path)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    query = "&".join(
        f"{name}={REDACTED}" if sep else name
        for name, sep, _ in (item.partition("=") for item in parts.query.split("&") if item))
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))
