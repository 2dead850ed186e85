"""Adam and the seeded mini-batches of mfarray.optim."""

import numpy as np
import pytest

from mfarray import optim


def _run(update, state, x, grad_fn, steps):
    for _ in range(steps):
        delta, state = update(grad_fn(x), state)
        x = x + delta
    return x, state


def test_adam_minimises_a_convex_quadratic():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    Q = A @ A.T + 0.5 * np.eye(6)  # condition number ~ 100
    b = rng.standard_normal(6)
    x_star = np.linalg.solve(Q, b)  # minimiser of x^T Q x / 2 - b^T x
    init, update = optim.adam(lambda step: 0.05 * 0.5 ** (step // 1000))  # halving steps: Adam settles
    x, state = _run(update, init(np.zeros(6)), np.zeros(6), lambda x: Q @ x - b, 12000)
    assert state.step == 12000
    np.testing.assert_allclose(x, x_star, rtol=0, atol=1e-8 * np.abs(x_star).max())


def test_adam_solves_a_least_squares_problem():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 8))
    y = X @ rng.standard_normal(8) + 0.1 * rng.standard_normal(200)
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    init, update = optim.adam(lambda step: 0.02 * 0.5 ** (step // 800))
    w, _ = _run(update, init(np.zeros(8)), np.zeros(8), lambda w: X.T @ (X @ w - y) / len(y), 10000)
    np.testing.assert_allclose(w, w_star, rtol=0, atol=1e-9)


def test_adam_first_step_is_lr_times_sign():
    # bias correction: the first step is -lr g / (|g| + eps) whatever the scale of g
    init, update = optim.adam(1e-3)
    g = np.array([3.0, -1e-4, 250.0])
    delta, state = update(g, init(np.zeros(3)))
    np.testing.assert_allclose(delta, -1e-3 * np.sign(g), rtol=1e-3)
    assert state.step == 1 and isinstance(state, optim.AdamState)


def test_adam_matches_the_textbook_recursion():
    rng = np.random.default_rng(2)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-6
    init, update = optim.adam(lr, b1, b2, eps)
    state, m, v = init(np.zeros(4)), np.zeros(4), np.zeros(4)
    for t in range(1, 6):
        g = rng.standard_normal(4)
        delta, state = update(g, state)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expected = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(delta, expected, rtol=1e-13)


def test_adam_state_restores_bit_for_bit():
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((6, 5))
    init, update = optim.adam(0.1)
    s = init(np.zeros(5))
    deltas = []
    for g in grads:
        d, s = update(g, s)
        deltas.append(d)
    s2 = init(np.zeros(5))
    for g in grads[:3]:
        _, s2 = update(g, s2)
    s2 = optim.AdamState(step=int(s2.step), m=s2.m.copy(), v=s2.v.copy())  # e.g. from a checkpoint
    for g, d in zip(grads[3:], deltas[3:]):
        d2, s2 = update(g, s2)
        assert np.array_equal(d, d2)


@pytest.mark.parametrize("kw, match", [({"lr": 0.0}, "lr"), ({"lr": 1e-3, "b1": 1.0}, "b1"),
                                       ({"lr": 1e-3, "b2": -0.1}, "b2"), ({"lr": 1e-3, "eps": 0}, "eps")])
def test_adam_refuses_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.adam(**kw)


def test_adam_refuses_bad_vectors():
    init, update = optim.adam(1e-3)
    with pytest.raises(ValueError, match="flat parameter vector"):
        init(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="grad has shape"):
        update(np.zeros(3), init(np.zeros(4)))


@pytest.mark.parametrize("n, batch", [(10, 3), (12, 4), (7, 7), (5, 9), (1000, 64)])
def test_batches_cover_every_index_once_per_epoch(n, batch):
    for epoch in range(3):
        bs = optim.epoch_batches(n, batch, seed=5, epoch=epoch)
        assert len(bs) == optim.n_batches(n, batch)
        assert all(len(b) == batch for b in bs[:-1]) and 1 <= len(bs[-1]) <= batch
        allidx = np.concatenate(bs)
        assert allidx.dtype == np.int64
        assert np.array_equal(np.sort(allidx), np.arange(n))


def test_batches_are_deterministic_and_differ_between_epochs_and_seeds():
    a = optim.epoch_batches(100, 16, seed=7, epoch=2)
    b = optim.epoch_batches(100, 16, seed=7, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = np.concatenate(optim.epoch_batches(100, 16, seed=7, epoch=3))
    d = np.concatenate(optim.epoch_batches(100, 16, seed=8, epoch=2))
    assert not np.array_equal(np.concatenate(a), c)
    assert not np.array_equal(np.concatenate(a), d)


def test_minibatches_resume_with_the_same_batches():
    full = list(optim.minibatches(30, 7, seed=1, epochs=4))
    tail = list(optim.minibatches(30, 7, seed=1, epochs=4, start=2))
    head = [item for item in full if item[0] >= 2]
    assert len(tail) == len(head) == 2 * optim.n_batches(30, 7)
    assert all(e1 == e2 and np.array_equal(i1, i2) for (e1, i1), (e2, i2) in zip(head, tail))


def test_drop_last():
    bs = optim.epoch_batches(10, 3, seed=0, epoch=0, drop_last=True)
    assert [len(b) for b in bs] == [3, 3, 3] and optim.n_batches(10, 3, drop_last=True) == 3
    assert len(set(np.concatenate(bs).tolist())) == 9
    with pytest.raises(ValueError, match="drop_last"):
        optim.epoch_batches(3, 5, seed=0, epoch=0, drop_last=True)


@pytest.mark.parametrize("args, match", [((0, 3, 0, 0), "n "), ((5, 0, 0, 0), "batch"), ((5, 2, -1, 0), "seed"),
                                         ((5, 2, 0, -1), "epoch"), ((5.0, 2, 0, 0), "n must be an integer")])
def test_batches_refuse_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        optim.epoch_batches(*args)


def test_sgd_is_gradient_descent_with_its_schedule():
    """sgd's update is -lr(step) g bit for bit, its step counts, bad states and rates are refused."""
    init, update = optim.sgd(lambda step: 0.5 ** step)
    g = np.array([1.0, -2.0, 3.0])
    state = init(np.zeros(3))
    for step in range(3):
        delta, state = update(g, state)
        assert np.array_equal(delta, -(0.5 ** step) * g)
    assert state.step == 3
    with pytest.raises(TypeError, match="SGDState"):
        update(g, optim.adam(0.1)[0](np.zeros(3)))
    with pytest.raises(ValueError, match="lr"):
        optim.sgd(-1.0)


def test_run_epoch_minimises_a_least_squares_problem_with_either_optimiser():
    """run_epoch on mini-batches of a consistent least-squares problem reaches its solution (Adam
    and SGD), the mean loss it returns is the batch losses weighted by batch size, and the
    epoch's updates are exactly the hand-written loop's."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((200, 5))
    x_true = rng.standard_normal(5)
    y = A @ x_true

    def value_and_grad(x, idx):
        r = A[idx] @ x - y[idx]
        return float(np.mean(r * r)), 2.0 * A[idx].T @ r / len(idx), 0

    for make, lr, epochs in ((optim.adam, 0.05, 300), (optim.sgd, 0.05, 300)):
        init, update = make(lr)
        x, state = np.zeros(5), init(np.zeros(5))
        for epoch in range(epochs):
            batches = optim.epoch_batches(200, 32, 0, epoch)
            ref_x, ref_state, losses_ = x, state, []
            for idx in batches:  # the loop run_epoch stands for
                v, g, _ = value_and_grad(ref_x, idx)
                d, ref_state = update(g, ref_state)
                ref_x = ref_x + d
                losses_.append(v * len(idx))
            x, state, mean, skipped = optim.run_epoch(x, state, update, batches, value_and_grad)
            assert np.array_equal(x, ref_x) and skipped == 0
            assert mean == pytest.approx(sum(losses_) / 200, rel=1e-15)
        np.testing.assert_allclose(x, x_true, atol=1e-6)


def test_schedules_and_gradients_are_checked_every_step():
    """A schedule returning -0.1 climbed the loss, NaN gave NaN steps, '0.1' and True were rates;
    an inf gradient left Adam's v = inf and every later step NaN."""
    for bad in (lambda s: -0.1, lambda s: float("nan"), lambda s: "0.1"):
        for make in (optim.adam, optim.sgd):
            init, update = make(bad)
            with pytest.raises(ValueError, match=r"lr\(0\)"):
                update(np.ones(3), init(np.zeros(3)))
    with pytest.raises(ValueError, match="lr must be a number"):
        optim.adam(True)
    init, update = optim.adam(0.1)
    with pytest.raises(FloatingPointError, match="grad has non-finite"):
        update(np.array([1.0, np.inf, 0.0]), init(np.zeros(3)))
