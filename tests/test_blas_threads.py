"""backend.one_blas_thread is reference-counted over threads: BLAS stays at one thread while
any user, on any thread, is inside it, and the last user to leave restores the thread count
found by the first, whichever threads entered and left (threadpoolctl >= 3.8 ignores a thread
count set by a thread other than its "controlling" one: a limit set in one thread and restored
in another used to leave OpenBLAS at one thread for the rest of the process)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import threadpoolctl
from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

from mfarray import backend

pytestmark = pytest.mark.skipif(not any(i["user_api"] == "blas" for i in threadpool_info()),
                                reason="no BLAS library seen by threadpoolctl")

ORIGINAL = 3  # a thread count other than 1 (cores() may be 1 or 2 here), set for each test


def blas_threads() -> set[int]:
    """The thread counts of the BLAS libraries loaded, as threadpoolctl reads them."""
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def set_blas_threads(n: int) -> None:
    """BLAS at n threads, no thread left in control of OpenBLAS (threadpoolctl >= 3.8 lets
    only its "controlling" thread change OpenBLAS's count; its limit contexts keep control)."""
    ThreadpoolController().limit(limits=n, user_api="blas")  # sets at once; not a context
    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)


@pytest.fixture(autouse=True)
def original():
    """BLAS at ORIGINAL threads in each test, the count found before restored after."""
    before = blas_threads()
    set_blas_threads(ORIGINAL)
    assert blas_threads() == {ORIGINAL}
    yield
    set_blas_threads(max(before))


def in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


class User(threading.Thread):
    """A thread entering one_blas_thread on ``enter`` and leaving it on ``leave``."""

    def __init__(self):
        super().__init__()
        self.enter, self.leave = threading.Event(), threading.Event()
        self.inside, self.left = threading.Event(), threading.Event()
        self.seen = []

    def run(self):
        self.enter.wait(10)
        with backend.one_blas_thread():
            self.seen.append(blas_threads())
            self.inside.set()
            self.leave.wait(10)
        self.left.set()

    def step(self, event, done):
        event.set()
        assert done.wait(10)


def test_overlapping_users_on_different_threads():
    """A enters, B enters, A leaves: still one thread; B leaves: the original count."""
    a, b = User(), User()
    a.start(), b.start()
    try:
        a.step(a.enter, a.inside)
        assert blas_threads() == {1}
        b.step(b.enter, b.inside)
        a.step(a.leave, a.left)
        assert blas_threads() == {1}, "the first user's exit restored BLAS threads under the second"
        assert in_thread(blas_threads) == {1}
        b.step(b.leave, b.left)
        assert blas_threads() == {ORIGINAL}, "the last user's exit did not restore the original count"
    finally:
        for u in (a, b):
            u.enter.set(), u.leave.set()
            u.join()
    assert a.seen == b.seen == [{1}]


def test_entered_in_one_thread_left_in_another():
    """The main thread enters first, a worker leaves last, and the other way round."""
    w = User()
    w.start()
    with backend.one_blas_thread():
        w.step(w.enter, w.inside)
    assert blas_threads() == {1}
    w.step(w.leave, w.left)
    w.join()
    assert blas_threads() == {ORIGINAL}

    w = User()
    w.start()
    w.step(w.enter, w.inside)
    with backend.one_blas_thread():
        w.step(w.leave, w.left)
        assert blas_threads() == {1}
    w.join()
    assert blas_threads() == {ORIGINAL}


def test_a_burst_of_concurrent_users_restores_the_original():
    """32 threads entering and leaving (some nested) at random moments: one BLAS thread seen by
    every one of them inside, the original count after the last."""
    n, rounds = 32, 5
    barrier, seen, errors = threading.Barrier(n), [], []
    lock = threading.Lock()

    def user(k):
        rng = np.random.default_rng(k)
        try:
            barrier.wait(10)
            for _ in range(rounds):
                with backend.one_blas_thread():
                    if rng.random() < 0.5:
                        with backend.one_blas_thread():
                            got = blas_threads()
                    else:
                        got = blas_threads()
                    with lock:
                        seen.append(got)
                threading.Event().wait(rng.uniform(0, 2e-3))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == n * rounds and all(s == {1} for s in seen)
    assert blas_threads() == {ORIGINAL}
    with backend.one_blas_thread():  # and the limit still works afterwards, from any thread
        assert in_thread(blas_threads) == {1}
    assert in_thread(blas_threads) == {ORIGINAL}


def test_nested_use_in_one_thread():
    with backend.one_blas_thread():
        assert blas_threads() == {1}
        with backend.one_blas_thread():
            assert blas_threads() == {1}
        assert blas_threads() == {1}, "the inner exit restored BLAS threads under the outer"
    assert blas_threads() == {ORIGINAL}


def test_an_error_inside_still_restores():
    with pytest.raises(RuntimeError, match="inside"), backend.one_blas_thread():
        raise RuntimeError("inside")
    assert blas_threads() == {ORIGINAL}
    with backend.one_blas_thread():
        assert blas_threads() == {1}


def test_a_limit_context_held_by_another_thread_does_not_disable_it():
    """A threadpoolctl context in the main thread (user code) holds control of OpenBLAS; tile
    threads entering and leaving one_blas_thread meanwhile still get one BLAS thread, and
    the context's own restore still works."""
    with threadpool_limits(limits=2, user_api="blas"):
        w = User()
        w.start()
        w.step(w.enter, w.inside)
        w.step(w.leave, w.left)
        w.join()
        assert w.seen == [{1}]
        assert blas_threads() == {2}
    assert blas_threads() == {ORIGINAL}


@pytest.mark.parametrize("threads", [None, 1, 2, 5])
def test_thread_map_keeps_order_holds_one_blas_thread_and_restores(threads):
    seen = []
    out = backend.thread_map(lambda i: seen.append(blas_threads()) or i * i, range(7), threads=threads)
    assert out == [i * i for i in range(7)]
    assert all(s == {1} for s in seen) and len(seen) == 7
    assert blas_threads() == {ORIGINAL}
    assert backend.thread_map(lambda i: i, [], threads=threads) == []
