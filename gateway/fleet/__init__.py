"""Fleet state: what gateway instances behind one Service share (see :mod:`gateway.fleet.state`)."""

from __future__ import annotations

from gateway.fleet.state import FleetState
from gateway.fleet.url import StateUrl, StateUrlError


def open_state(url: StateUrl | str) -> FleetState:
    """The :class:`FleetState` for a ``--state`` URL (``memory://`` or ``redis://…``)."""
    parsed = url if isinstance(url, StateUrl) else StateUrl.parse(url)
    if parsed.backend == "memory":
        return FleetState()
    from gateway.fleet.redis_state import RedisFleetState

    return RedisFleetState(parsed)


__all__ = ["FleetState", "StateUrl", "StateUrlError", "open_state"]
