"""The batched engine: scheduler (which sessions step), runner (model state, worker thread), core (the loop)."""

from streaming.engine.core import Engine, EngineConfig

__all__ = ["Engine", "EngineConfig"]
