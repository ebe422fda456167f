"""The one retry layer: retry a provider stream only while nothing has been yielded, within one deadline.

Once an event has reached the caller a retry would make the client see text twice, so after the first
event failures propagate as they are. Adapters never retry on their own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from chatstudio.llm.base import LLMError, ProviderUnavailable, StreamEvent

log = logging.getLogger("chatstudio.llm")

StreamFactory = Callable[[], AsyncIterator[StreamEvent]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    deadline: float = 300.0
    base_delay: float = 0.5
    max_delay: float = 8.0
    # A provider asking for a longer pause than this is told to the client instead of making it wait.
    max_retry_after: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)
    jitter: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int, error: LLMError, deadline_at: float) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None when giving up is right."""
        if not error.retryable or attempt >= self.max_retries:
            return None
        if error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            delay = error.retry_after
        else:
            # "Equal jitter": at least half the exponential step, so retries never bunch at zero.
            step = min(self.max_delay, self.base_delay * 2**attempt)
            delay = step / 2 + self.jitter() * step / 2
        if self.clock() + delay >= deadline_at:
            return None
        return delay

    async def stream(
        self, start: StreamFactory, *, provider: str | None = None, deadline_at: float | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        if deadline_at is None:
            deadline_at = self.clock() + self.deadline
        loop = asyncio.get_running_loop()
        deadline = _Deadline(loop, loop.time() + deadline_at - self.clock(), provider, self.deadline)
        try:
            attempt = 0
            while True:
                events = start()
                try:
                    first = await deadline.next(events)
                except LLMError as error:
                    await _close(events)
                    delay = self.delay(attempt, error, deadline_at)
                    if delay is None:
                        raise
                    attempt += 1
                    log.info("%s: %s; retry %d in %.2fs", provider or "provider", error.code, attempt, delay)
                    await self.sleep(delay)
                    continue
                except BaseException:
                    await _close(events)
                    raise
                break
            try:
                event = first
                while event is not None:
                    yield event
                    event = await deadline.next(events)
            finally:
                await _close(events)
        finally:
            deadline.cancel()


class _Deadline:
    """One timer for a whole stream that cancels the task only while it waits on the provider.

    `asyncio.timeout` around every step would cost a timer per token (it doubled the per-event cost
    in measurements), and one around the whole stream would also cancel whatever the consumer awaits
    between events (its own writes to the client).
    """

    __slots__ = ("_fired", "_handle", "_loop", "_provider", "_seconds", "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float, provider: str | None, seconds: float) -> None:
        self.expired = False
        self._fired = False
        self._task: asyncio.Task[object] | None = None
        self._loop = loop
        self._provider = provider
        self._seconds = seconds
        self._handle = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._task is not None:  # only ever set while the task is suspended inside next()
            self._fired = True
            self._task.cancel()

    async def next(self, events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
        """The next event, None at the end; ProviderUnavailable once the deadline has passed."""
        if self.expired:
            raise self._expired()
        # Given the loop, current_task() skips get_running_loop(), which on Python 3.11 is a getpid()
        # system call: this runs for every event of every stream.
        task = self._task = asyncio.current_task(self._loop)
        try:
            return await anext(events)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            # Ours, and nobody else asked for cancellation too: it is the deadline, not a shutdown.
            if self._fired and task is not None and task.uncancel() == 0:
                raise self._expired() from None
            raise
        finally:
            self._task = None

    def _expired(self) -> ProviderUnavailable:
        return ProviderUnavailable(
            message=f"{self._provider or 'The provider'} did not finish within the {self._seconds:g}s deadline.",
            provider=self._provider,
        )

    def cancel(self) -> None:
        self._handle.cancel()


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
