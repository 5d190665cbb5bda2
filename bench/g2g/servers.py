"""The servers a run talks to, each a subprocess on 127.0.0.1: causalcast, and fastrtc when installed."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def subprocess_server(argv: list[str], port: int, name: str) -> Iterator[str]:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log: {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; log: {log.name}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def causalcast_server(port: int, extra: list[str] | None = None) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, "-m", "streaming", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "WARNING", "--ice-loopback-only"]
    return subprocess_server(argv + (extra or []), port, "causalcast")


def fastrtc_server(port: int, concurrency_limit: int) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, "-m", "bench.g2g.fastrtc_server", str(port), str(concurrency_limit)]
    return subprocess_server(argv, port, "fastrtc")


def fastrtc_installed() -> bool:
    try:
        import fastrtc  # noqa: F401
    except Exception:
        return False
    return True
