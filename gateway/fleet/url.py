"""StateUrl: where fleet state lives, from ``--state`` / ``GATEWAY_STATE_URL``.

``memory://`` keeps state in the process (one instance). ``redis://[:password@]host:port/db`` (``rediss://`` for
TLS) shares it among every instance that names the same server, database and ``?prefix=`` (default
``llm-gateway``); ``?sync_s=`` sets how often an instance syncs (default 0.5 s) and ``?timeout_s=`` how long one
Redis round trip may take before the store counts as down (default 1 s). Other query parameters go to the Redis
client as they are (``ssl_ca_certs=…`` for a private CA, say).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_PREFIX = "llm-gateway"
PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class StateUrlError(ValueError):
    """A ``--state`` value the gateway cannot use (the message says why, without the password)."""


@dataclass(frozen=True)
class StateUrl:
    backend: str  # "memory" or "redis"
    redis_url: str = ""  # the URL handed to the Redis client (our own parameters removed)
    prefix: str = DEFAULT_PREFIX
    sync_s: float = 0.5
    timeout_s: float = 1.0
    shown: str = "memory://"  # for logs and /admin/state: the password masked

    @classmethod
    def parse(cls, text: str) -> StateUrl:
        parts = urlsplit(text.strip())
        if parts.scheme == "memory":
            return cls("memory")
        if parts.scheme not in ("redis", "rediss"):
            raise StateUrlError(
                f"--state must be memory:// or redis://host:port/db (or rediss://), not {_mask(text)!r}"
            )
        if not parts.hostname:
            raise StateUrlError(f"--state {_mask(text)!r} names no Redis host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise StateUrlError(f"--state {_mask(text)!r} has a bad port") from None
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = options.pop("prefix", DEFAULT_PREFIX)
        if not PREFIX.fullmatch(prefix):
            raise StateUrlError("--state ?prefix= must be 1-64 characters of letters, digits and _.:-")
        sync_s = _seconds(options.pop("sync_s", "0.5"), "sync_s", 0.05, 10)
        timeout_s = _seconds(options.pop("timeout_s", "1"), "timeout_s", 0.05, 30)
        redis_url = urlunsplit(parts._replace(query=urlencode(options)))
        return cls("redis", redis_url, prefix, sync_s, timeout_s, _mask(redis_url))


def _seconds(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise StateUrlError(f"--state ?{name}= must be a number of seconds") from None
    if not low <= value <= high:
        raise StateUrlError(f"--state ?{name}= must be within {low:g}..{high:g} seconds")
    return value


def _mask(text: str) -> str:
    parts = urlsplit(text)
    if parts.password is None:
        return text
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))
