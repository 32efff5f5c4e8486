"""One model, many clients: a bounded queue in front of one worker thread that runs every model call.

The event loop never touches torch; it submits a Task and waits for the events the task posts. The
worker interleaves requests step by step instead of running each to its end. Every round it first
starts every waiting request there is a free slot for (its splice or prefill and first token,
looking at the queue again after each), then advances every active request by one token. Prefill
comes first, as in vLLM's scheduler: a new request waits only for the splices ahead of it, never for
other answers' tokens, which is what keeps time to first token low with many clients; the slots
bound how long decoding can be held up. Every request's tokens are the ones it gets alone (each has
its own cache; nothing is shared between them but the model).

Bounded twice: at most `max_active` requests hold a cache at once, and at most `max_queue` wait
behind them; one more is refused (ServerBusy, HTTP 503). A task that is cancelled (its client went
away) leaves the queue at once, or, when active, is closed by the worker before its next step, so its
cache goes back to the pool. close() stops taking tasks and returns once every accepted one is done.

Background work (`idle`: compiling the variants `serve --learn-after` asks for) runs on the same
worker, one piece at a time, only when no request waits or runs: a request that arrives meanwhile
waits for that piece to end.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Protocol

from skillforge.server.errors import ServerBusy

log = logging.getLogger("skillforge.server")


class Task(Protocol):
    """What the worker runs. start/step return True when the task is finished; both post their own
    results and errors to whoever waits (the worker only catches what they let through)."""

    cancelled: threading.Event

    def start(self) -> bool: ...

    def step(self) -> bool: ...

    def fail(self, exc: BaseException) -> None: ...

    def close(self) -> None: ...


class Scheduler:
    """`idle()` does one piece of background work and returns True, or False when there is none."""

    def __init__(self, max_queue: int = 64, max_active: int = 16, idle: Callable[[], bool] | None = None):
        if max_queue < 0 or max_active < 1:
            raise ValueError("max_queue must be >= 0 and max_active >= 1")
        self.max_queue = max_queue
        self.max_active = max_active
        self.idle = idle
        self._cond = threading.Condition()
        self._waiting: deque[Task] = deque()
        self._active: list[Task] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="skillforge-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not yet started)."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Requests holding a cache (started, not finished)."""
        return len(self._active)

    def submit(self, task: Task) -> None:
        with self._cond:
            if self._closing:
                raise ServerBusy("the server is shutting down; retry on another instance")
            free = max(0, self.max_active - len(self._active))  # those start next, without waiting for a slot
            if len(self._waiting) >= self.max_queue + free:
                raise ServerBusy(f"the request queue is full ({self.max_queue} waiting); retry in a moment")
            self._waiting.append(task)
            self._cond.notify()

    def cancel(self, task: Task) -> None:
        """The client is gone: drop the task if it waits, else have the worker close it before its next step."""
        task.cancelled.set()
        with self._cond:
            if task in self._waiting:
                self._waiting.remove(task)

    def close(self) -> None:
        """Refuse new tasks, finish every accepted one, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                busy, closing = bool(self._waiting or self._active), self._closing
            if not busy and not closing and self._background():
                continue  # one piece done: look at the queue again before the next
            with self._cond:
                while not self._waiting and not self._active and not self._closing:
                    self._cond.wait()
                if not self._waiting and not self._active:
                    return  # closing, and nothing left
            while (new := self._admit()) is not None:  # prefill first, re-checking the queue after each
                if not self._advance(new, new.start):
                    self._active.remove(new)
            for task in list(self._active):
                if not self._advance(task, task.step):
                    self._active.remove(task)

    def _admit(self) -> Task | None:
        """The next waiting task if a slot is free; it holds the slot from the start of its prefill."""
        with self._cond:
            if not self._waiting or len(self._active) >= self.max_active:
                return None
            task = self._waiting.popleft()
            self._active.append(task)
            return task

    def _advance(self, task: Task, call: Callable[[], bool]) -> bool:
        """One start or step; True while the task goes on, else it is closed (its cache released).
        A task's failure is posted to its client and never stops the worker."""
        done = True
        if not task.cancelled.is_set():
            try:
                done = call()
            except Exception as exc:  # noqa: BLE001 - the worker outlives every request
                log.exception("a request failed in the model worker")
                self._quietly(lambda: task.fail(exc))
        if done:
            self._quietly(task.close)
        return not done

    def _background(self) -> bool:
        """One piece of `idle` work, outside the lock (submit never waits for it); True when it did
        one. Its failure is logged and never stops the worker."""
        if self.idle is None:
            return False
        try:
            return self.idle()
        except Exception:  # noqa: BLE001 - the worker outlives its background work
            log.exception("background work in the model worker failed")
            return True

    @staticmethod
    def _quietly(call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:  # noqa: BLE001
            log.exception("cleaning up after a request failed")
