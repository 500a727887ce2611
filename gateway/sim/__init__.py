"""A simulated vLLM OpenAI-compatible server for tests, load tests and ``sim://`` backends.

Behavior per model comes from a ``SimProfile`` (latency, limits, injected faults), changed live with
``POST /sim/config``; ``GET /sim/stats`` counts what each model received. Deterministic given the seed.
"""

from gateway.sim.profile import ModelProfile, SimProfile
from gateway.sim.server import SimServer, build_app, run_sim

__all__ = ["ModelProfile", "SimProfile", "SimServer", "build_app", "run_sim"]
