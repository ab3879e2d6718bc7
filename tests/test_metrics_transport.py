"""The metrics judge's frames transport to its worker processes (labeler.judges.metrics.transport):
exact copies in shared memory, blocks reused and bounded, nothing left behind after ``aclose``,
errors per request, the same answers as measuring in this process, and worker processes that reuse
the memory they free."""

from __future__ import annotations

import asyncio
import os
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

import labeler.judges.metrics.transport as transport
from labeler.judges.metrics import MetricsJudge
from labeler.judges.metrics.transport import NAME_PREFIX, SharedSlots, call_with_frames, shareable
from labeler.schemas import FramesTooSmallError, SegmentRequest
from tests.conftest import textured_frames


def exists(name: str) -> bool:
    try:
        block = SharedMemory(name)
    except FileNotFoundError:
        return False
    block.close()
    return True


def our_blocks() -> set[str]:
    """The blocks this test process made that exist now (Linux keeps POSIX shared memory under
    /dev/shm); other processes' blocks, another test run's on the same machine, do not count."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"{NAME_PREFIX}{os.getpid()}_")}


needs_dev_shm = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory not listed")


def test_lent_block_carries_exact_read_only_copies_of_any_layout():
    frames = textured_frames(4, 20, 30)
    strided = frames[:, ::2, 1::3]  # not contiguous: copied by value all the same
    floats = np.linspace(-1.0, 1.0, 24, dtype=np.float64).reshape(2, 3, 4)
    empty = np.zeros((0, 5, 5, 3), np.uint8)
    slots = SharedSlots(1)
    with slots.lend([frames, None, strided, floats, empty]) as shared:
        got = call_with_frames(shared, lambda *arrays: [None if a is None else a.copy() for a in arrays])
        flags = call_with_frames(shared, lambda *arrays: [a.flags.writeable for a in arrays if a is not None])
    assert got[1] is None
    for sent, back in zip([frames, strided, floats, empty], [got[0], *got[2:]], strict=True):
        assert back.dtype == sent.dtype and back.shape == sent.shape and np.array_equal(back, sent)
    assert flags == [False, False, False, False]  # a worker cannot change what it was sent
    slots.close()


def test_blocks_are_reused_grown_when_too_small_and_bounded():
    small, large = np.ones((2, 16, 16, 3), np.uint8), np.ones((3, 1024, 1024, 3), np.uint8)
    slots = SharedSlots(2)
    with slots.lend([small]) as first:
        pass
    with slots.lend([small, small]) as again:
        assert again.name == first.name  # the free block is reused, not made anew
    with slots.lend([small]) as one, slots.lend([small]) as two:
        assert one.name != two.name  # two at once: two blocks
        with pytest.raises(RuntimeError, match="all 2 blocks are lent"), slots.lend([small]):
            pass
    with slots.lend([large]) as grown:
        assert grown.name not in (one.name, two.name)  # 9 MiB: a block too small gave way
    assert len(slots.names) == 2 and sum(not exists(n) for n in (one.name, two.name)) == 1
    slots.close()
    assert not any(exists(n) for n in (one.name, two.name, grown.name))


def test_close_unlinks_blocks_lent_at_the_time_when_they_come_back():
    slots = SharedSlots(1)
    with slots.lend([np.zeros(10, np.uint8)]) as shared:
        slots.close()
        assert exists(shared.name)  # a worker may still be reading it
    assert not exists(shared.name)
    with pytest.raises(RuntimeError, match="after close"), slots.lend([np.zeros(1, np.uint8)]):
        pass


def test_a_cancelled_call_does_not_give_its_block_back():
    """The worker may still read a block whose call was cancelled: it is not lent again."""
    slots = SharedSlots(1)
    with pytest.raises(asyncio.CancelledError), slots.lend([np.zeros(10, np.uint8)]) as shared:
        raise asyncio.CancelledError
    assert slots.names == [] and not exists(shared.name)
    with pytest.raises(ValueError, match="boom"), slots.lend([np.zeros(10, np.uint8)]) as answered:
        raise ValueError("boom")  # the worker answered with an error: done with the block
    assert slots.names == [answered.name]
    slots.close()


def test_an_error_leaves_no_view_that_keeps_a_worker_block_mapped(monkeypatch):
    monkeypatch.setattr(transport, "_MAPPED", transport.OrderedDict())
    slots = SharedSlots(1)

    def fails(frames: np.ndarray) -> None:
        local = frames[1:]  # a view in a frame of the traceback
        raise ValueError(f"bad {local.shape}")

    with slots.lend([np.zeros((4, 4), np.uint8)]) as shared:
        with pytest.raises(ValueError, match="bad") as caught:
            call_with_frames(shared, fails)
        assert caught.value.__traceback__ is not None
        block = transport._MAPPED[shared.name]
        block.close()  # would raise BufferError while a view of it were alive
    slots.close()


def test_a_worker_keeps_only_the_most_recent_blocks_mapped(monkeypatch):
    monkeypatch.setattr(transport, "_MAPPED", transport.OrderedDict())
    slots = SharedSlots(2)
    names = []
    for size in (10, 3 << 20, 5 << 20):  # each larger: a new block each time, the old one retired
        with slots.lend([np.zeros(size, np.uint8)]) as shared:
            assert call_with_frames(shared, lambda a: int(a.size)) == size
            names.append(shared.name)
    assert list(transport._MAPPED) == names[1:]  # ``keep`` = 2: the oldest mapping was closed
    slots.close()
    for block in transport._MAPPED.values():
        block.close()


def test_only_arrays_of_plain_values_are_shareable():
    assert shareable([np.zeros(3, np.uint8), None, np.zeros(2, np.float32)])
    assert not shareable([np.zeros(3, np.uint8), np.array([1, "x"], dtype=object)])


# --------------------------------------------------------------------------- through the judge


@needs_dev_shm
def test_worker_answers_match_this_process_and_aclose_leaves_no_block():
    before = our_blocks()
    clean = textured_frames(8, 48, 80)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    requests = [
        SegmentRequest("p", noisy, clean, 0.0, 1.0, reference=clean),
        SegmentRequest("p", clean, noisy[:, :, ::-1], 0.0, 1.0),  # a strided view, no reference
        SegmentRequest("p", clean[:, :40], noisy[:, :40], 0.0, 1.0, reference=clean[:, :40]),  # smaller
    ]
    tiny = textured_frames(4, 8, 8)
    judge = MetricsJudge(processes=1)

    async def run() -> list:
        try:
            answers = await asyncio.gather(*(judge.judge(r) for r in requests))
            made = our_blocks() - before
            assert 1 <= len(made) <= 2  # two blocks per worker at most, reused between requests
            with pytest.raises(FramesTooSmallError, match="too small"):  # this request's own error
                await judge.judge(SegmentRequest("p", tiny, tiny.copy(), 0.0, 1.0))
            answers.append(await judge.judge(SegmentRequest("p", noisy, clean, 0.0, 1.0)))  # still served
            return answers
        finally:
            await judge.aclose()

    answers = asyncio.run(run())
    here = MetricsJudge()
    assert answers == [here.score(r) for r in requests] + [
        here.score(SegmentRequest("p", noisy, clean, 0.0, 1.0))
    ]
    assert our_blocks() - before == set()  # every block unlinked


def test_a_reference_of_python_objects_is_pickled_and_judged_alike():
    clean = textured_frames(8, 32, 48)
    blurred = ((clean[:, :-1].astype(np.int16) + clean[:, 1:]) // 2).astype(np.uint8)[:, :31]
    as_objects = clean[:, :31].astype(object)
    request = SegmentRequest("p", blurred, clean[:, :31].copy(), 0.0, 1.0, reference=as_objects)
    judge = MetricsJudge(processes=1)

    async def run():
        try:
            return await judge.judge(request)
        finally:
            await judge.aclose()

    assert asyncio.run(run()) == MetricsJudge().score(request)


# --------------------------------------------------------------------------- worker memory


def page_faults_of_reusing_memory() -> int:
    """Minor page faults while a process allocates and frees 4 MB in 100 kB arrays, 40 times (run
    in a worker process: a spawned one imports this module)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        held = [np.ones(100_000, np.uint8) for _ in range(40)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_judge_workers_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as plain:
        default_faults = plain.submit(page_faults_of_reusing_memory).result()
    if default_faults < 1000:
        pytest.skip("this C library keeps freed memory already")
    judge = MetricsJudge(processes=1)

    async def run() -> int:
        try:
            assert judge._pool is not None
            return await asyncio.wrap_future(judge._pool.submit(page_faults_of_reusing_memory))
        finally:
            await judge.aclose()

    assert asyncio.run(run()) < default_faults / 20  # the same work, without the fresh pages


@needs_dev_shm
def test_blocks_have_their_pages_reserved_when_made(monkeypatch):
    """A sparse block on a tmpfs that fills up later would kill the main process with SIGBUS at
    the first write it cannot back (Docker's /dev/shm is 64 MiB); reserving up front fails cleanly."""
    seen: list[tuple[str, int, int]] = []
    real = os.posix_fallocate

    def spy(fd: int, offset: int, length: int) -> None:
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", spy)
    slots = SharedSlots(1)
    with slots.lend([np.zeros(3 << 20, np.uint8)]) as shared:
        assert shared is not None
        assert seen == [(f"/dev/shm/{shared.name}", 0, 3 << 20)]  # whole MiB: 3 MiB exactly
    slots.close()


@needs_dev_shm
def test_a_file_system_that_cannot_reserve_is_written_as_before(monkeypatch):
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    slots = SharedSlots(1)
    data = np.arange(100, dtype=np.uint8)
    with slots.lend([data]) as shared:
        assert shared is not None
        assert call_with_frames(shared, lambda x: x.copy()).tolist() == data.tolist()
    slots.close()


@needs_dev_shm
def test_full_shared_memory_sends_frames_through_pipes_with_the_same_answers(monkeypatch, caplog):
    """No room in /dev/shm (ENOSPC when reserving): each request is pickled to the worker as before
    the transport existed, the answers are the same, a warning says so once, nothing is left."""

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    before = our_blocks()
    requests = [
        SegmentRequest("p", textured_frames(6, 64, 96, seed=s), textured_frames(6, 64, 96, seed=s + 1), 0, 1)
        for s in (1, 2, 3)
    ]
    expected = [MetricsJudge().score(r) for r in requests]
    judge = MetricsJudge(processes=1)

    async def run() -> list:
        try:
            return [await judge.judge(r) for r in requests]
        finally:
            await judge.aclose()

    with caplog.at_level("WARNING", logger=transport.__name__):
        assert asyncio.run(run()) == expected
    warnings = [r.getMessage() for r in caplog.records if r.name == transport.__name__]
    assert (
        len(warnings) == 1 and "has no room for a 1 MiB block" in warnings[0] and "--shm-size" in warnings[0]
    )
    assert our_blocks() == before
