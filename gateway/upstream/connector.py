"""How the upstream client connects: TLS contexts from the policy, and a pool that drops out-of-step connections.

Kept apart from :mod:`gateway.upstream.client` because both are about the connection, not the request: the TLS
context is built once per setting, and :class:`StrictConnector` is the one place the gateway reaches into
aiohttp's pool.
"""

from __future__ import annotations

import logging
import ssl

import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from gateway.errors import UpstreamConnectError
from gateway.policy.schema import TlsSpec

log = logging.getLogger("gateway.upstream")


class StrictConnector(aiohttp.TCPConnector):
    """aiohttp's connector, except that an idle pooled connection on which the backend sent bytes while nobody was
    asking (a second answer after the first, say) is closed rather than handed to the next request, which would
    read those bytes as its own answer. aiohttp reuses any idle connection that is still open; this hooks its
    private ``_get`` (aiohttp is pinned below 4, and tests/test_transport_conformance.py covers it)."""

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        for protocol, _ in self._conns.get(key, ()):  # in the order aiohttp takes them: stop at the one it will
            if not protocol.should_close:
                break
            protocol.close()  # no longer connected: the pool drops it
        return await super()._get(key, traces)


def ssl_context(tls: TlsSpec | None) -> ssl.SSLContext | bool:
    """TLS for ``https://`` backends: the system's CAs and host-name checks unless the policy says otherwise."""
    if tls is None:
        return True
    try:
        return _load_tls(tls)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS settings %s cannot be used: %s", tls, exc)
        raise UpstreamConnectError("the model's TLS files cannot be used (see the gateway's log)") from None


def _load_tls(tls: TlsSpec) -> ssl.SSLContext:
    if not tls.verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
