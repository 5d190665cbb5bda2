"""Operator commands against a running cluster: drain (or resume) one engine replica.

    python -m streaming.ray_serve.admin drain REPLICA_ID [--resume] [--app causalcast] [--address auto]

A drained replica refuses new sessions (the router already avoids it: it reports ``draining``) while its
running sessions continue; for a rolling update drain, wait until its sessions reach 0 (``/healthz``),
then let Serve replace it. Replica ids are in ``/healthz`` (``replicas[].replica``) and in every `ready`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ray import serve

from streaming.ray_serve.app import ENGINE_DEPLOYMENT

DEFAULT_APP = "causalcast"


def drain(
    replica_id: str, *, draining: bool = True, app_name: str = DEFAULT_APP, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Drain (or with ``draining=False`` resume) one engine replica; returns its state or an ``error``."""
    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name)
    response = handle.options(method_name="drain").remote(draining, route={"replica": replica_id})
    return response.result(timeout_s=timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m streaming.ray_serve.admin", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    drain_parser = sub.add_parser("drain", help="stop a replica taking new sessions (its sessions continue)")
    drain_parser.add_argument("replica", help="replica id (see /healthz)")
    drain_parser.add_argument("--resume", action="store_true", help="take new sessions again")
    drain_parser.add_argument("--app", default=DEFAULT_APP, help="Serve application name")
    drain_parser.add_argument("--address", default="auto", help="Ray cluster address")
    args = parser.parse_args(argv)
    import ray

    ray.init(address=args.address, log_to_driver=False)
    result = drain(args.replica, draining=not args.resume, app_name=args.app)
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
