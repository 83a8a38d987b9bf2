"""`Supervisor`: the owner of a component's long-lived tasks, so none of them dies unnoticed.

A task that asyncio runs and nobody awaits can die of an exception and leave only a "Task exception was never
retrieved" at garbage collection: the hub would then stop updating anyone while /health says ok. Each task here
is watched: an exception (or a cancellation that did not come from `close()`) is logged with the task's name and
the task is started again after a backoff; `on_restart` lets the owner catch up on what it may have missed. A
task that returns normally is done (a loop returns when its component is closing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Supervisor"]

log = logging.getLogger("ripple.hub")


class Supervisor:
    def __init__(self, *, on_restart: Callable[[str], None] | None = None, max_delay_s: float = 5.0) -> None:
        self._on_restart = on_restart
        self._max_delay_s = max_delay_s
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}
        self._down: set[str] = set()
        self._closing = False

    def start(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `run()` as task `name`, again whenever it dies, until `close()`."""
        self.restarts[name] = 0
        self._keepers[name] = asyncio.create_task(self._keep(name, run), name=f"{name}-supervisor")

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The current run of `name` (tests end it to see it come back)."""
        return self._running.get(name)

    @property
    def healthy(self) -> bool:
        """False while a task is down, between its death and its restart."""
        return not self._down

    async def _keep(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = 0.05
        while not self._closing:
            task = asyncio.create_task(run(), name=name)
            self._running[name] = task
            try:
                await asyncio.shield(task)
                return
            except asyncio.CancelledError:
                if self._closing or not task.cancelled():
                    task.cancel()
                    raise  # the keeper itself was cancelled: close() or the loop ending
                log.error("task %s was cancelled from outside; restarting it in %.2f s", name, delay)
            except Exception:
                log.exception("task %s died; restarting it in %.2f s", name, delay)
            finally:
                if self._running.get(name) is task:
                    del self._running[name]
            self._down.add(name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay_s)
            self._down.discard(name)
            self.restarts[name] += 1
            if self._on_restart is not None:
                self._on_restart(name)

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._keepers.values(), *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
