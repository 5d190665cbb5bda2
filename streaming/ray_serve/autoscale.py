"""Autoscaling engine replicas on sessions per replica (a Serve custom autoscaling policy).

Serve's default policy scales on ongoing *requests*; a causalcast session is not a Serve request (its
bytes go over a relayed WebSocket or straight to the replica over WebRTC), so each replica reports its
sessions in ``record_autoscaling_stats`` and this policy asks for ``ceil(sessions / target)`` replicas.
Serve then applies the deployment's ``min_replicas``/``max_replicas``, ``upscale_delay_s``,
``downscale_delay_s`` and scaling factors around it.

Limits (see deploy/README.md):

* Set ``target_sessions_per_replica`` below what a replica admits (its admission control refuses the
  rest): a replica that is full refuses new sessions, so a load that only ever meets full replicas would
  not show as more sessions. Aim at ~70 % of the sessions one replica holds in real time.
* A new replica takes its model load and warm-up (seconds to minutes on a GPU) before it takes sessions;
  upscaling answers a trend, not a burst: keep headroom with ``min_replicas``.
* Scale-down stops replicas Serve chooses; each drains (takes no new session) and is removed only when its
  sessions ended or its drain timeout passed. Long sessions make scale-down slow, by design.

This module imports nothing from causalcast: Serve pickles it by value into its controller.
"""

from __future__ import annotations

import math
from typing import Any


class SessionsPolicy:
    """``ceil(total sessions / target_sessions_per_replica)`` replicas (Serve bounds and delays the answer)."""

    def __init__(self, target_sessions_per_replica: float = 32.0) -> None:
        if target_sessions_per_replica <= 0:
            raise ValueError("target_sessions_per_replica must be positive")
        self.target_sessions_per_replica = float(target_sessions_per_replica)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Serve's policy interface: the desired replica count and the policy's state (none kept)."""
        per_replica = (ctx.aggregated_metrics or {}).get("sessions", {})
        total = float(sum(per_replica.values()))
        desired = math.ceil(total / self.target_sessions_per_replica)
        return max(desired, ctx.capacity_adjusted_min_replicas), {}
