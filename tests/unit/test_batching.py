"""MicroBatcher: concurrent single requests meet in batches; each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.scoring.batching import MicroBatcher

LONG_WAIT_S = 60.0  # never reached in a passing test: only a full batch or a flush can run it
TIMEOUT_S = 10.0  # guards against a hang; no test asserts how long anything took


class Recorder:
    """A batch function that answers item * 10 and records every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        return [item * 10 for item in items]


async def settle() -> None:
    """Let every ready task run (several loop turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_concurrent_submits_are_gathered_into_batches_of_max_size() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_size=2, max_wait_s=0.01)

    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(5))), TIMEOUT_S)

    assert results == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1], [2, 3], [4]]  # the last, partial batch runs once max_wait_s passes
    assert batcher.batch_sizes == [2, 2, 1]


async def test_a_partial_batch_waits_for_more_items_then_runs_full() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_size=3, max_wait_s=LONG_WAIT_S)

    first = asyncio.create_task(batcher.submit(1))
    second = asyncio.create_task(batcher.submit(2))
    await settle()
    assert run.batches == []
    assert not first.done()

    third = await asyncio.wait_for(batcher.submit(3), TIMEOUT_S)

    assert (await first, await second, third) == (10, 20, 30)
    assert run.batches == [[1, 2, 3]]


async def test_a_lone_item_runs_after_max_wait_s() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_size=8, max_wait_s=0.01)

    assert await asyncio.wait_for(batcher.submit(7), TIMEOUT_S) == 70
    assert run.batches == [[7]]


async def test_each_caller_gets_the_answer_for_its_own_item() -> None:
    async def shout(items: Sequence[str]) -> list[str]:
        return [item.upper() for item in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(shout, max_size=4, max_wait_s=0.01)
    words = ["ada", "bo", "cy", "di", "ed", "flo"]

    async def ask(word: str) -> tuple[str, str]:
        return word, await batcher.submit(word)

    answers = await asyncio.wait_for(asyncio.gather(*(ask(word) for word in reversed(words))), TIMEOUT_S)

    assert all(answer == word.upper() for word, answer in answers)
    assert batcher.batch_sizes == [4, 2]


async def test_an_error_reaches_every_caller_of_its_batch_and_later_batches_still_work() -> None:
    calls: list[list[int]] = []

    async def fragile(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky batch")
        return [item + 1 for item in items]

    batcher = MicroBatcher(fragile, max_size=2, max_wait_s=0.01)

    outcomes = await asyncio.wait_for(
        asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True), TIMEOUT_S
    )

    assert [type(outcome) for outcome in outcomes] == [ValueError, ValueError]
    assert outcomes[0] is outcomes[1]
    assert str(outcomes[0]) == "unlucky batch"
    later = await asyncio.wait_for(asyncio.gather(batcher.submit(2), batcher.submit(3)), TIMEOUT_S)
    assert list(later) == [3, 4]
    assert calls == [[13, 1], [2, 3]]


async def test_a_wrong_number_of_results_fails_the_whole_batch() -> None:
    async def drops_one(items: Sequence[int]) -> list[int]:
        return list(items[:-1])

    batcher = MicroBatcher(drops_one, max_size=2, max_wait_s=0.01)

    outcomes = await asyncio.wait_for(
        asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True), TIMEOUT_S
    )

    for outcome in outcomes:
        assert isinstance(outcome, RuntimeError)
        assert "returned 1 results for 2 items" in str(outcome)


async def test_batches_run_one_at_a_time_in_order_of_arrival() -> None:
    running, most_running = 0, 0
    order: list[list[int]] = []
    release = asyncio.Event()

    async def slow(items: Sequence[int]) -> list[int]:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        order.append(list(items))
        await release.wait()
        running -= 1
        return list(items)

    batcher = MicroBatcher(slow, max_size=1, max_wait_s=LONG_WAIT_S)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await settle()
    assert order == [[0]], "the second batch waits for the first"

    release.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S) == [0, 1, 2]
    assert order == [[0], [1], [2]]
    assert most_running == 1


async def test_a_caller_that_gave_up_is_left_out_of_its_batch() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_size=3, max_wait_s=LONG_WAIT_S)
    quitter = asyncio.create_task(batcher.submit(1))
    stayer = asyncio.create_task(batcher.submit(2))
    await settle()
    quitter.cancel()

    last = await asyncio.wait_for(batcher.submit(3), TIMEOUT_S)

    assert (await stayer, last) == (20, 30)
    assert run.batches == [[2, 3]]
    assert quitter.cancelled()


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(Recorder(), max_size=0)
