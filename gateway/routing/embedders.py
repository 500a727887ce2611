"""Embedders: texts → vectors from a policy's ``kind: embedding`` model, for ``semantic`` cohort rules.

Both implement :class:`gateway.routing.embedding.Embedder`. :class:`GatewayEmbedder` is what the running gateway
uses: the model's pool picks a replica, :func:`gateway.transport.build_request` builds the ``/v1/embeddings``
request (served name, backend key) and the shared :class:`UpstreamClient` sends it, so TLS, pooling and error
mapping are the gateway's own. :class:`DirectEmbedder` is for offline commands (explain, calibrate): ``sim://``
models are computed in process with the simulator's own function, http(s) models are called through a private
client.

Every failure is one :class:`EmbeddingUnavailable`; classification turns it into "the rule does not hold", never
into an error for the client::

    failure                                               reason
    no available replica, connection refused, pool full   unavailable
    budget spent (ours, or the client's own timeouts)     timeout
    non-200 answer, malformed or mis-sized answer         error
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.errors import UpstreamBusy, UpstreamConnectError, UpstreamError, UpstreamTimeout
from gateway.policy.schema import PolicySpec
from gateway.routing.embedding import EmbeddingUnavailable, Vector
from gateway.sim import SimProfile
from gateway.sim.embeddings import embed as sim_embed
from gateway.transport import build_request
from gateway.upstream.client import Timeouts, UpstreamClient
from gateway.upstream.pool import BackendRegistry
from gateway.wire import loads

MAX_EMBEDDING_ANSWER_BYTES = 64 * 1024 * 1024
"""Largest ``/v1/embeddings`` answer read: 256 inputs of 8192 float32 coordinates, base64, is about 11 MiB."""
SIM_SCHEME = "sim://"


class GatewayEmbedder:
    """Embeddings through the gateway's upstream stack. ``registry`` and ``client`` are read at each call, so a
    reload's new pools (or a restarted client) are followed."""

    def __init__(self, registry: Callable[[], BackendRegistry], client: Callable[[], UpstreamClient]) -> None:
        self._registry = registry
        self._client = client

    async def embed(self, model: str, texts: Sequence[str], timeout_s: float) -> list[Vector]:
        if not texts:
            return []
        pool = self._registry().pools.get(model)
        replicas = pool.order(2) if pool is not None else []
        if not replicas:
            raise EmbeddingUnavailable("unavailable", f"model {model!r} has no available replica")
        body = {"model": model, "input": list(texts), "encoding_format": "base64"}
        timeouts = Timeouts(timeout_s, timeout_s, total_s=timeout_s, pool_wait_s=timeout_s)
        client = self._client()
        failure: EmbeddingUnavailable | None = None
        try:
            async with asyncio.timeout(timeout_s):
                for backend in replicas:  # a second replica only when the request never reached the first
                    request = build_request(backend, "embeddings", body, {}, stream=False)
                    backend.inflight += 1
                    try:
                        response = await client.post(
                            request.url, request.body, request.headers, timeouts, request.settings
                        )
                        raw = await response.read(MAX_EMBEDDING_ANSWER_BYTES)
                    except (UpstreamConnectError, UpstreamBusy) as exc:
                        failure = EmbeddingUnavailable("unavailable", f"model {model!r}: {exc}")
                        continue
                    finally:
                        backend.inflight -= 1
                    if response.status != 200:
                        raise EmbeddingUnavailable("error", f"model {model!r} answered {response.status}")
                    return parse_vectors(raw, len(texts))
        except (TimeoutError, UpstreamTimeout):
            raise EmbeddingUnavailable("timeout", f"model {model!r} took longer than {timeout_s:g}s") from None
        except UpstreamError as exc:
            raise EmbeddingUnavailable("error", f"model {model!r}: {exc}") from None
        assert failure is not None
        raise failure


def parse_vectors(raw: bytes, count: int) -> list[Vector]:
    """The vectors of an OpenAI/vLLM embeddings answer (``float`` lists or little-endian float32 ``base64``), in
    input order; anything else is an ``error``."""
    try:
        answer = loads(raw)
        data = answer["data"]
        if not isinstance(data, list) or len(data) != count:
            raise ValueError(f"{count} inputs, {len(data) if isinstance(data, list) else 'no'} vectors")
        ordered: list[Any] = [None] * count
        for item in data:
            ordered[item["index"]] = item["embedding"]
        vectors = [_vector(v) for v in ordered]
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as exc:
        raise EmbeddingUnavailable("error", f"malformed embeddings answer: {exc}") from None
    if len({v.shape[0] for v in vectors}) > 1:
        raise EmbeddingUnavailable("error", "malformed embeddings answer: vectors of different lengths")
    return vectors


def _vector(value: Any) -> Vector:
    if isinstance(value, str):
        vector = np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").astype(np.float32)
    elif isinstance(value, list):
        vector = np.asarray(value, dtype=np.float32)
    else:
        raise ValueError("an embedding is neither a list of floats nor base64")
    if vector.ndim != 1 or vector.shape[0] == 0 or not np.all(np.isfinite(vector)):
        raise ValueError("an embedding is empty or not finite")
    return vector


def sim_vectors(texts: Sequence[str], size: int) -> list[Vector]:
    """The simulator's vectors, computed here: exactly what a ``sim://`` backend answers."""
    return [np.asarray(sim_embed(text, size), dtype=np.float32) for text in texts]


class DirectEmbedder:
    """Embeddings for offline use, straight from the policy's backends (no health checks, no breakers).

    ``sim://`` models are computed in process (a worker thread) with ``sim_profile``'s ``embedding_dim``; other
    models go to their http(s) replicas with the backend key and TLS settings of their policy entry. Use it as an
    async context manager, or call :meth:`close`.
    """

    def __init__(self, policy: PolicySpec, sim_profile: SimProfile | None = None) -> None:
        self._policy = policy
        self._profile = sim_profile or SimProfile()
        self._client = UpstreamClient()
        embedding = {name: spec for name, spec in policy.models.items() if spec.kind == "embedding"}
        self._registry = BackendRegistry.from_policy(policy.model_copy(update={"models": embedding}), lambda url: url)
        self._remote = GatewayEmbedder(lambda: self._registry, lambda: self._client)

    async def __aenter__(self) -> DirectEmbedder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def embed(self, model: str, texts: Sequence[str], timeout_s: float) -> list[Vector]:
        spec = self._policy.models.get(model)
        if spec is None:
            raise EmbeddingUnavailable("unavailable", f"model {model!r} is not in the policy")
        if any(url.startswith(SIM_SCHEME) for url in spec.backends):
            size = self._profile.for_model(self._policy.served_name(model)).embedding_dim
            try:
                async with asyncio.timeout(timeout_s):
                    return await asyncio.to_thread(sim_vectors, list(texts), size)
            except TimeoutError:
                raise EmbeddingUnavailable("timeout", f"model {model!r} took longer than {timeout_s:g}s") from None
        await self._client.start()
        return await self._remote.embed(model, texts, timeout_s)
