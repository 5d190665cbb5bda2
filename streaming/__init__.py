"""causalcast runtime: server, transports, sessions and the batched engine.

Kept import-light on purpose: importing :mod:`streaming` does not import aiohttp, PyAV or torch.
Imports point down: ``streaming`` uses ``models`` (the contract, the error types in :mod:`models.errors`),
never the reverse.
"""

__version__ = "0.1.0"
