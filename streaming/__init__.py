"""causalcast runtime: server, transports, sessions and the batched engine.

Kept import-light on purpose: importing :mod:`streaming` does not import aiohttp, PyAV or torch, so
model code can depend on :mod:`streaming.errors` on a machine that has only torch.
"""

__version__ = "0.1.0"
