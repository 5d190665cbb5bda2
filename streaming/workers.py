"""Several server processes on one port (``causalcast serve --workers N``), each with its own engine.

One asyncio loop carries the transports of every session it serves (WebSocket frames, WebRTC's Opus and
SRTP, resampling), at a cost per session that bounds how many one process holds in real time (the runtime
bench measured ~0.5 % of a loop per 20 ms-framed audio session). A GPU steps far more sessions than that
(docs/gpu.md: VC 4,862 at batch 1,024), so a GPU server runs several processes, as uvicorn's ``--workers``
or vLLM's API-server count do: each binds the same port with ``SO_REUSEPORT`` (the kernel spreads new
connections over them), loads the models and runs its own engine; on a GPU their steps share the device.

A session lives in the process its connection reached. So what spans sessions is per process too: a
broadcast can be watched only through the process that holds it (route viewers to it, e.g. by sticky
sessions at a proxy), and ``/healthz`` and ``/metrics`` describe the process that answered (both name it:
``worker`` and ``pid``). Linux and macOS only (``SO_REUSEPORT``).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
from multiprocessing.connection import wait
from types import FrameType

log = logging.getLogger(__name__)


def _worker(config, index: int, torch_threads: int, log_level: str) -> None:
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s")
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
    from streaming.server import run

    run(config, worker=index)


def serve_workers(config, num_workers: int, torch_threads: int = 0, log_level: str = "INFO") -> int:
    """Run ``num_workers`` server processes on ``config``'s port until SIGINT/SIGTERM; returns an exit code.

    Processes are spawned (not forked) so none inherits another's CUDA context or threads. If one dies, the
    others are stopped too and the exit code says so: a supervisor (systemd, Kubernetes) restarts the set.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        print("causalcast: --workers needs SO_REUSEPORT (Linux, macOS)", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(config, i, torch_threads, log_level), name=f"causalcast-worker-{i}")
             for i in range(num_workers)]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each worker shuts its sessions down gracefully

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.start()
        wait([p.sentinel for p in procs])  # until one exits: on its own, or after a signal stopped them all
        if not stopping:
            dead = next(p for p in procs if p.exitcode is not None)
            log.error("worker %s exited with %s: stopping the others", dead.name, dead.exitcode)
            stop(signal.SIGTERM, None)
        for p in procs:
            p.join(timeout=config.shutdown_timeout_s + 5)
            if p.is_alive():
                p.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [p.exitcode for p in procs]
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1
