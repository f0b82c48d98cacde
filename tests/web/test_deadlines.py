"""`Deadline`: a block that overruns gets TimeoutError, one that finishes in time is left
alone, a cancellation from elsewhere passes through, and requests share timers."""

from __future__ import annotations

import asyncio
import time

import pytest

from receiver.web.deadlines import Deadline


def test_a_block_that_overruns_gets_timeout_error_after_its_time_rounded_up_to_a_step() -> None:
    async def main() -> float:
        deadline = Deadline(0.3, resolution=0.1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with deadline.start():
                await asyncio.sleep(5)
        return time.monotonic() - started

    took = asyncio.run(main())
    # 0.3 s rounded up to the next 0.1 s step; the slack above is for a loaded machine.
    assert 0.3 <= took < 1.0, f"timed out after {took:.3f} s; expected 0.3 to 0.4 s"


def test_a_block_that_finishes_in_time_is_never_interrupted_afterwards() -> None:
    async def main() -> str:
        deadline = Deadline(0.1, resolution=0.05)
        with deadline.start():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # past the deadline, outside the block
        return "done"

    assert asyncio.run(main()) == "done"


def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    async def main() -> None:
        async def guarded() -> None:
            with Deadline(5).start():
                await asyncio.sleep(5)

        task = asyncio.create_task(guarded())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_concurrent_requests_share_one_timer_per_step_and_each_times_out_alone() -> None:
    async def main() -> tuple[list[str], int]:
        deadline = Deadline(0.2, resolution=0.25)

        async def request(delay: float) -> str:
            try:
                with deadline.start():
                    await asyncio.sleep(delay)
            except TimeoutError:
                return "timeout"
            return "ok"

        tasks = [asyncio.create_task(request(0.01 if n % 2 else 2)) for n in range(200)]
        await asyncio.sleep(0)
        steps = len(deadline._steps)  # noqa: SLF001 - the point of the class
        return list(await asyncio.gather(*tasks)), steps

    outcomes, steps = asyncio.run(main())
    assert outcomes == ["timeout", "ok"] * 100
    assert steps <= 2  # 200 requests started together: one or two timers, not 200
