"""Serve's request router for engine replicas: sessions by load, viewers to their producer, pins by id.

Every call to an :class:`~streaming.ray_serve.replica.EngineReplica` carries a ``route`` keyword (a small
dict) that says what the call needs:

* ``{"model": name, "exclude": [ids]}``: a new session (:func:`placement.rank_for_session`);
* ``{"share": session_id}``: a viewer of a shared session, to the replica whose report lists it (when no
  report lists it yet, any replica: the ingress then looks it up on every replica);
* ``{"replica": id}``: that replica (drain, a viewer found by lookup). A replica that is gone is not in
  the candidates; the call then goes to another one, which answers ``replica_gone`` instead of acting.

Each rank holds one replica, so Serve tries them in our order (it still skips a replica whose queue of
Serve requests is full). Sessions placed since a replica's last report count towards its load.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from streaming.ray_serve.placement import ReplicaLoad, find_share, rank_for_session

ROUTE_KWARG = "route"


class SessionRouter(RequestRouter):
    """Ranks engine replicas by the admission state they report (see the module docstring)."""

    def initialize_state(self, **kwargs: Any) -> None:
        """Called once by Serve with ``request_router_kwargs``."""
        self._placements: dict[str, deque[float]] = defaultdict(deque)  # replica id -> wall times of placements

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ranks of one replica each, best first."""
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        route = _route_of(pending_request)
        loads = {replica_id: ReplicaLoad.from_stats(r.routing_stats) for replica_id, r in by_id.items()}
        if (pinned := route.get("replica")) is not None:
            order = [pinned] if pinned in by_id else sorted(by_id)  # gone: another answers `replica_gone`
        elif (share := route.get("share")) is not None:
            producer = find_share(loads, share)
            order = [producer] if producer is not None else sorted(by_id)
        elif (model := route.get("model")) is not None:
            order = rank_for_session(loads, model, route.get("exclude", ()), self._placed_since_report(loads))
        else:  # anything else (status, a socket's first message before `start`): least sessions first
            order = sorted(by_id, key=lambda r: loads[r].num_sessions if loads[r] is not None else 0)
        return [[by_id[replica_id]] for replica_id in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        """Count a session placement until the replica's next report includes it."""
        if _route_of(pending_request).get("model") is not None:
            self._placements[replica_id.unique_id].append(time.time())

    def _placed_since_report(self, loads: dict[str, ReplicaLoad | None]) -> dict[str, int]:
        counts = {}
        for replica_id, times in self._placements.items():
            load = loads.get(replica_id)
            reported_at = load.reported_at_s if load is not None else 0.0
            while times and times[0] <= reported_at:
                times.popleft()
            counts[replica_id] = len(times)
        return counts


def _route_of(pending_request: PendingRequest | None) -> dict[str, Any]:
    if pending_request is None:
        return {}
    route = pending_request.kwargs.get(ROUTE_KWARG)
    return route if isinstance(route, dict) else {}
