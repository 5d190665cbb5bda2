"""An asyncio event loop on a virtual clock, for tests of code that sleeps and reads an injected clock.

Timers (``asyncio.sleep``, ``wait_for`` timeouts, ``call_later``) fire in virtual time: whenever every task
waits, the clock jumps to the next timer instead of sleeping. Code under test gets ``loop.time`` as its
clock (the pacers' ``clock=`` argument), so a test of a 2-second stream takes milliseconds and its timing
is exact: no wall clock, no load on the machine, can move a result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector loop whose ``time()`` only advances when it would otherwise wait for a timer."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._virtual_now = start
        real_select = self._selector.select

        def select(timeout: float | None = None) -> Any:
            events = real_select(0)  # sockets never wait: the loop only waits for timers
            if not events and timeout:
                self._virtual_now += timeout  # jump to the next timer
            return events

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        """The virtual clock."""
        return self._virtual_now


def run_virtual(main: Callable[[VirtualClockLoop], Awaitable[T]]) -> T:
    """Run ``main(loop)`` to completion on a fresh :class:`VirtualClockLoop`."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()
