"""Where a new session, a viewer or a pinned call goes: pure decisions over the replicas' reported load.

No Ray here (the request router in :mod:`streaming.ray_serve.router` feeds these functions and turns the
answer into Serve's ranks), so the policy is tested on plain data.

A replica reports a :class:`ReplicaLoad` through Serve's routing statistics every period. For a new
session of a model, replicas that serve the model, are not draining and whose own admission control
would take one more session now (``room``) come first, the least loaded first: fewest sessions, counting
the ones placed on it since its last report (a burst of starts must not all land on the replica that
looked emptiest a moment ago). When no replica has room, the one closest to room is still chosen: its
own admission control then refuses with the usual ``capacity`` error and its reason, and it is the
authority (the reports are a period old).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica's admission state, as reported in its routing statistics."""

    reported_at_s: float = 0.0  # the replica's wall clock when it took the report
    draining: bool = False
    models: tuple[str, ...] = ()
    sessions_per_model: Mapping[str, int] = field(default_factory=dict)
    room: Mapping[str, str | None] = field(default_factory=dict)  # model -> None (admits) or the refusal reason
    utilization: float = 0.0  # device busy share the engine projects for its sessions
    loop_busy: float = 0.0  # event-loop busy share
    shared: frozenset[str] = frozenset()  # ids of shared sessions viewers can watch here

    @property
    def num_sessions(self) -> int:
        """Sessions of every model."""
        return sum(self.sessions_per_model.values())

    def has_room(self, model: str) -> bool:
        """Serves ``model``, is not draining, and its admission control would take one more now."""
        return not self.draining and model in self.models and self.room.get(model, "unknown") is None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any] | None) -> ReplicaLoad | None:
        """Parse a routing-stats dict (None: the replica has not reported yet)."""
        if not stats or "models" not in stats:
            return None
        return cls(
            reported_at_s=float(stats.get("t", 0.0)),
            draining=bool(stats.get("draining", False)),
            models=tuple(stats["models"]),
            sessions_per_model=dict(stats.get("sessions_per_model", {})),
            room=dict(stats.get("room", {})),
            utilization=float(stats.get("utilization", 0.0)),
            loop_busy=float(stats.get("loop_busy", 0.0)),
            shared=frozenset(stats.get("shared", ())),
        )


def rank_for_session(
    loads: Mapping[str, ReplicaLoad | None],
    model: str,
    exclude: Iterable[str] = (),
    placed_since_report: Mapping[str, int] | None = None,
) -> list[str]:
    """Replica ids to try for a new ``model`` session, best first (never empty while a replica exists).

    Order: with room, least loaded first; then those that have not reported yet; then, so that the
    refusal comes from a replica's own admission control, those without room (closest to room first,
    draining ones last). ``exclude`` (replicas that just refused) goes to the very end.
    """
    placed = placed_since_report or {}
    excluded = set(exclude)

    def load_key(replica_id: str) -> tuple[float, ...]:
        load = loads[replica_id]
        assert load is not None
        sessions = load.num_sessions + placed.get(replica_id, 0)
        return (sessions, load.utilization, load.loop_busy)

    with_room, unknown, full, draining = [], [], [], []
    for replica_id, load in loads.items():
        if replica_id in excluded:
            continue
        if load is None:
            unknown.append(replica_id)
        elif load.has_room(model):
            with_room.append(replica_id)
        elif load.draining:
            draining.append(replica_id)
        elif model in load.models:
            full.append(replica_id)
    ranked = sorted(with_room, key=load_key) + sorted(unknown) + sorted(full, key=load_key) + sorted(draining)
    rest = [r for r in loads if r not in ranked]  # excluded, or not serving the model at all
    return ranked + sorted(rest, key=lambda r: (r not in excluded, r))


def find_share(loads: Mapping[str, ReplicaLoad | None], session_id: str) -> str | None:
    """The replica that reported ``session_id`` among its shared sessions (None: no report has it yet)."""
    for replica_id, load in loads.items():
        if load is not None and session_id in load.shared:
            return replica_id
    return None
