"""causalcast on Ray Serve: one engine per GPU replica, sessions routed by load, past one machine.

Layout (each module one job):

* :mod:`~streaming.ray_serve.replica`: an engine replica runs the ordinary server (its models, its engine,
  its admission control) and reports its admission state to Serve;
* :mod:`~streaming.ray_serve.router` (policy in :mod:`~streaming.ray_serve.placement`): Serve's request
  router: a new session goes to a replica with room for its model, a viewer to its producer's replica;
* :mod:`~streaming.ray_serve.ingress` and :mod:`~streaming.ray_serve.relay`: the public HTTP API; a
  WebSocket is relayed to the replica of its session, a WebRTC offer answered by the chosen replica
  (media then flows to that replica's node, not through Serve);
* :mod:`~streaming.ray_serve.autoscale`: replicas scale on sessions per replica;
* :mod:`~streaming.ray_serve.app`: the application builder (``streaming.ray_serve.app:app_builder``);
  :mod:`~streaming.ray_serve.admin`: draining a replica by hand.

Needs the ``ray`` extra (``pip install "causalcast[ray]"``); nothing else in causalcast imports this package.
See deploy/README.md for a cluster on Kubernetes.
"""
