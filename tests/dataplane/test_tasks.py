"""cancel_and_wait: the task's cancellation ends quietly, the caller's own is never swallowed."""

from __future__ import annotations

import asyncio

import pytest

from sluice.dataplane.tasks import cancel_and_wait


async def _slow_to_stop(stopped: asyncio.Event) -> None:
    """Sleeps forever; on cancellation takes a moment to clean up (as the monitor does)."""
    try:
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(0.05)
        stopped.set()


async def test_the_tasks_own_cancellation_ends_quietly() -> None:
    stopped = asyncio.Event()
    task = asyncio.create_task(_slow_to_stop(stopped))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and stopped.is_set()


async def test_a_caller_cancelled_while_it_waits_is_cancelled() -> None:
    """The server's graceful stop is cancelled by a second SIGTERM while it stops the monitor: with
    `suppress(CancelledError)` it went on waiting for flows for the whole shutdown_timeout."""
    stopped = asyncio.Event()
    went_on = False

    async def caller() -> None:
        nonlocal went_on
        inner = asyncio.create_task(_slow_to_stop(stopped))
        await asyncio.sleep(0)
        await cancel_and_wait(inner)
        went_on = True
        await asyncio.sleep(3600)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.01)  # caller is inside cancel_and_wait, the inner task cleaning up
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not went_on


async def test_an_error_of_the_task_is_raised() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("cleanup failed")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)
