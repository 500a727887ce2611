"""KeyRing: client authentication and per-key allow-lists from the policy's ``keys``.

Keys are stored as sha256 digests (``sha256:<hex>``) or read from the environment (``env:VAR``, hashed at load),
so a policy file never has to hold a secret. A presented key is hashed and compared with every stored digest in
constant time. An ``env:`` key whose variable is unset can never match (fail closed) and is logged. Without
``keys`` the gateway is open, for development.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.policy.schema import KeySpec

log = logging.getLogger("gateway.auth")


@dataclass(frozen=True)
class ClientKey:
    name: str
    spec: KeySpec


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: ``Authorization: Bearer <key>``, or ``api-key`` / ``x-api-key`` headers."""
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return headers.get("api-key") or headers.get("x-api-key")


def _digest(spec: KeySpec, name: str, environ: Mapping[str, str]) -> bytes | None:
    if spec.key.startswith("sha256:"):
        return bytes.fromhex(spec.key.removeprefix("sha256:"))
    variable = spec.key.removeprefix("env:")
    value = environ.get(variable)
    if not value:
        log.error("key %r: environment variable %s is unset or empty; the key is disabled", name, variable)
        return None
    return hashlib.sha256(value.encode()).digest()


class KeyRing:
    def __init__(self, keys: Mapping[str, KeySpec] | None, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = keys is not None
        self._keys = [(name, spec, _digest(spec, name, env)) for name, spec in (keys or {}).items()]

    def authenticate(self, headers: Mapping[str, str]) -> ClientKey | None:
        """The client's key, or None when auth is off; raises :class:`AuthenticationFailed` otherwise."""
        if not self.enabled:
            return None
        sent = presented_key(headers)
        if sent is None:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(sent.encode()).digest()
        found: ClientKey | None = None
        for name, spec, stored in self._keys:  # no early exit: every key is compared
            if stored is not None and hmac.compare_digest(digest, stored) and found is None:
                found = ClientKey(name, spec)
        if found is None:
            raise AuthenticationFailed("invalid API key")
        return found


def allow_model(key: ClientKey | None, requested: str) -> None:
    if key is not None and key.spec.models is not None and requested not in key.spec.models:
        raise PermissionDenied(f"key '{key.name}' may not use model '{requested}'", param="model")


def allow_cohort(key: ClientKey | None, cohort: str) -> None:
    if key is not None and key.spec.cohorts is not None and cohort not in key.spec.cohorts:
        raise PermissionDenied(f"key '{key.name}' may not send requests of cohort '{cohort}'")
