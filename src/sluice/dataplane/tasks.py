"""Stopping background tasks without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended.

    `with suppress(CancelledError): await task` is not enough: when the *caller* is cancelled while it
    waits (a second SIGTERM cancels a graceful shutdown that is stopping the monitor), the caller's
    CancelledError is swallowed too and it carries on as if nothing happened. Here the task's own
    cancellation ends quietly and the caller's propagates."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
