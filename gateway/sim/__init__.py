"""A simulated vLLM OpenAI-compatible server for tests, load tests and ``sim://`` backends.

It serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` (and ``GET /v1/responses/{id}``),
``/v1/embeddings``, ``/v1/models``, ``/health`` and ``/metrics`` in vLLM 0.32's shapes, and honours what clients
rely on: ``n``, ``stop``, ``seed``, logprobs, ``max_tokens``, tool loops that end once the tool's result is in the
conversation, and a JSON Schema found in the prompt for ``json_object``.

Behavior per model comes from a ``SimProfile`` (latency, limits, injected faults, kind), changed live with
``POST /sim/config``; ``GET /sim/stats`` counts what each model received. Deterministic given the seed.
"""

from gateway.sim.profile import ModelProfile, SimProfile
from gateway.sim.server import SimServer, build_app, run_sim

__all__ = ["ModelProfile", "SimProfile", "SimServer", "build_app", "run_sim"]
