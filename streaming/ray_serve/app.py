"""Building the Serve application: engine replicas behind one ingress, routed by load.

From Python (tests, scripts)::

    serve.run(build_app(ReplicaSettings.from_command_line("--models pitch testcard"), num_replicas=2))

From a Serve config file or a KubeRay ``RayService`` (deploy/ray/rayservice.yaml)::

    import_path: streaming.ray_serve.app:app_builder
    args: {serve_args: "--models pitch testcard vc --device cuda", gpus_per_replica: 1,
           min_replicas: 1, max_replicas: 8, target_sessions_per_replica: 64}

Deployment options set here (resources, router, drain) can be overridden per deployment in the Serve
config (``deployments: [{name: EngineReplica, ...}]``) as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.deployment import Application

from streaming.ray_serve.autoscale import SessionsPolicy
from streaming.ray_serve.ingress import Ingress, IngressSettings
from streaming.ray_serve.replica import EngineReplica, ReplicaSettings
from streaming.ray_serve.router import SessionRouter

ENGINE_DEPLOYMENT = "EngineReplica"
INGRESS_DEPLOYMENT = "Ingress"


@dataclass(frozen=True)
class ClusterSettings:
    """How many engine replicas, on what resources, and how they are routed and scaled."""

    num_replicas: int = 1  # fixed count, unless autoscaling is on (max_replicas > 0)
    min_replicas: int = 1
    max_replicas: int = 0  # > 0: autoscale between min and max on sessions per replica
    target_sessions_per_replica: float = 32.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    gpus_per_replica: float = 1.0  # one engine per GPU
    cpus_per_replica: float = 4.0  # the event loop, codec threads, resampling
    stats_period_s: float = 1.0  # how often replicas report their admission state to routers
    ingress_replicas: int = 1
    ingress_cpus: float = 1.0
    max_sockets_per_ingress: int = 4096  # each relayed WebSocket is one ongoing request of the ingress
    ingress: IngressSettings = field(default_factory=IngressSettings)


def build_app(replica: ReplicaSettings, cluster: ClusterSettings | None = None) -> Application:
    """The Serve application (bind it with ``serve.run``)."""
    cluster = cluster or ClusterSettings()
    scaling: dict[str, Any] = {"num_replicas": cluster.num_replicas}
    if cluster.max_replicas > 0:
        scaling = {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=cluster.min_replicas,
                max_replicas=cluster.max_replicas,
                upscale_delay_s=cluster.upscale_delay_s,
                downscale_delay_s=cluster.downscale_delay_s,
                policy=AutoscalingPolicy(
                    policy_function=SessionsPolicy,
                    policy_kwargs={"target_sessions_per_replica": cluster.target_sessions_per_replica},
                ),
            )
        }
    engine = serve.deployment(
        EngineReplica,
        name=ENGINE_DEPLOYMENT,
        ray_actor_options={"num_gpus": cluster.gpus_per_replica, "num_cpus": cluster.cpus_per_replica},
        max_ongoing_requests=256,  # control calls only (placements, offers, status): sessions are not requests
        request_router_config=RequestRouterConfig(
            request_router_class=SessionRouter,
            request_routing_stats_period_s=cluster.stats_period_s,
            request_routing_stats_timeout_s=max(1.0, cluster.stats_period_s),
        ),
        # Serve kills a stopping replica after this; the replica drains for drain_timeout_s before.
        graceful_shutdown_timeout_s=replica.drain_timeout_s + 30.0,
        graceful_shutdown_wait_loop_s=1.0,
        **scaling,
    )
    ingress = serve.deployment(
        Ingress,
        name=INGRESS_DEPLOYMENT,
        num_replicas=cluster.ingress_replicas,
        ray_actor_options={"num_cpus": cluster.ingress_cpus},
        max_ongoing_requests=cluster.max_sockets_per_ingress,
    )
    return ingress.bind(engine.bind(replica), cluster.ingress)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder (``import_path: streaming.ray_serve.app:app_builder``) from config ``args``.

    ``serve_args`` holds the ``causalcast serve`` options every engine replica runs with; the other keys
    are :class:`ClusterSettings` fields and ``drain_timeout_s``.
    """
    args = dict(args)
    replica = ReplicaSettings.from_command_line(
        args.pop("serve_args", ""), drain_timeout_s=float(args.pop("drain_timeout_s", 600.0))
    )
    fields = ClusterSettings.__dataclass_fields__
    unknown = sorted(set(args) - set(fields) - {"ingress"})
    if unknown:
        known = ["serve_args", "drain_timeout_s", *sorted(fields)]
        raise ValueError(f"unknown causalcast app args: {unknown}; known: {known}")
    cluster = ClusterSettings(**{k: type(fields[k].default)(v) for k, v in args.items() if k != "ingress"})
    return build_app(replica, cluster)
