"""AdamW, RMSprop, Nesterov, clipping, bias-free decay, label smoothing and schedules.

Every update rule is checked against a float64 NumPy re-statement written here
from the published formulas (and against ``torch.optim`` when PyTorch is
installed); checkpoints must resume bit-exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import losses, optim
from nbcnn.kernels.cpu import optim as cpu_kernels


def _run(opt, p0, grads, ranges=None, no_decay=()):
    p = p0.copy()
    opt.setup(p.size, p.dtype)
    for g in grads:
        opt.step(p, g.copy(), ranges or [(0, p.size)], no_decay)
    return p


def _clip_factor(g, maxnorm, ranges):
    n = math.sqrt(sum(float((g[lo:hi].astype(np.float64) ** 2).sum()) for lo, hi in ranges))
    return min(1.0, maxnorm / (n + 1e-6))


def _ref_adamw(p, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8, decoupled=True, lrs=None):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        a = lrs(t - 1) if lrs else lr
        if decoupled:
            p = p * (1 - a * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - a * mh / (np.sqrt(vh) + eps)
    return p


def _ref_rmsprop(p, grads, lr, rho, eps, mom, centered, wd):
    p, v, ga, b = p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + wd * p
        v = rho * v + (1 - rho) * g * g
        if centered:
            ga = rho * ga + (1 - rho) * g
            d = np.sqrt(v - ga * ga) + eps
        else:
            d = np.sqrt(v) + eps
        if mom:
            b = mom * b + g / d
            p = p - lr * b
        else:
            p = p - lr * g / d
    return p


def _ref_sgd(p, grads, lr, mom, nesterov, wd, scale=None):
    p, v = p.copy(), np.zeros_like(p)
    for g in grads:
        g = (scale(g) if scale else 1.0) * g + wd * p
        if mom:
            v = mom * v + g
            g = g + mom * v if nesterov else v
        p = p - lr * g
    return p


def test_adamw_matches_reference(rng):
    p0 = rng.normal(0, 1, 20_001)  # more than one kernel block, odd tail
    grads = [rng.normal(0, 1, p0.size) for _ in range(5)]
    got = _run(optim.AdamW(0.01, weight_decay=0.1), p0, grads)
    np.testing.assert_allclose(got, _ref_adamw(p0, grads, 0.01, 0.1), rtol=1e-10, atol=1e-12)
    # a scheduled lr also scales the decoupled decay
    sched = optim.LinearWarmup(0.02, 3)
    got = _run(optim.AdamW(sched, weight_decay=0.05), p0, grads)
    np.testing.assert_allclose(got, _ref_adamw(p0, grads, None, 0.05, lrs=sched), rtol=1e-10, atol=1e-12)
    # AdamW differs from Adam's L2 decay
    l2 = _run(optim.Adam(0.01, weight_decay=0.1), p0, grads)
    np.testing.assert_allclose(l2, _ref_adamw(p0, grads, 0.01, 0.1, decoupled=False), rtol=1e-10, atol=1e-12)
    assert np.abs(l2 - got).max() > 1e-4


@pytest.mark.parametrize("rho,mom,centered,wd", [(0.99, 0.0, False, 0.0), (0.9, 0.9, False, 1e-2),
                                                 (0.95, 0.0, True, 0.0), (0.8, 0.5, True, 1e-3)])
def test_rmsprop_matches_reference(rng, rho, mom, centered, wd):
    p0 = rng.normal(0, 1, 1001)
    grads = [rng.normal(0, 1, p0.size) for _ in range(6)]
    got = _run(optim.RMSprop(0.01, rho=rho, momentum=mom, centered=centered, weight_decay=wd, epsilon=1e-6),
               p0, grads)
    np.testing.assert_allclose(got, _ref_rmsprop(p0, grads, 0.01, rho, 1e-6, mom, centered, wd),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("maxnorm", [0.5, 1e6])
def test_clipnorm_scales_by_the_global_norm(rng, maxnorm):
    p0 = rng.normal(0, 1, 300)
    grads = [rng.normal(0, 1, 300) for _ in range(4)]
    ranges = [(0, 100), (150, 300)]  # the frozen gap counts neither in the norm nor in the update
    got = _run(optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, clipnorm=maxnorm), p0, grads, ranges)
    ref = p0.copy()
    v = np.zeros_like(p0)
    for g in grads:
        c = _clip_factor(g, maxnorm, ranges)
        for lo, hi in ranges:
            gi = c * g[lo:hi] + 1e-2 * ref[lo:hi]
            v[lo:hi] = 0.9 * v[lo:hi] + gi
            ref[lo:hi] -= 0.1 * (gi + 0.9 * v[lo:hi])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13)
    assert np.array_equal(got[100:150], p0[100:150])
    if maxnorm > 1e3:  # no clipping at all: plain Nesterov
        np.testing.assert_allclose(got[:100], _ref_sgd(p0[:100], [g[:100] for g in grads], 0.1, 0.9, True, 1e-2),
                                   rtol=1e-12)


def test_sum_squares_over_blocks(rng):
    g = rng.normal(0, 1, 3 * cpu_kernels._BLOCK + 17).astype(np.float32)
    want = math.fsum(float(x) ** 2 for x in g[5:])
    got = cpu_kernels.sum_squares(g, 5, g.size)
    assert math.isclose(got, want, rel_tol=1e-12)
    assert cpu_kernels.sum_squares(g, 7, 7) == 0.0


@pytest.mark.parametrize("make", [lambda: optim.SGD(0.1, momentum=0.9, weight_decay=0.1, decay_biases=False),
                                  lambda: optim.AdamW(0.01, weight_decay=0.1, decay_biases=False),
                                  lambda: optim.RMSprop(0.01, weight_decay=0.1, decay_biases=False)])
def test_decay_skips_the_no_decay_ranges(rng, make):
    p0 = rng.normal(0, 1, 200)
    grads = [rng.normal(0, 1, 200) for _ in range(3)]
    ranges, nd = [(0, 120), (150, 200)], [(40, 60), (110, 160)]
    got = _run(make(), p0, grads, ranges, nd)
    # the same optimiser, decayed everywhere and nowhere, restricted to the pieces
    on = _run(_cfg(make(), True), p0, grads, ranges)
    off = _run(_cfg(make(), True, wd=0.0), p0, grads, ranges)
    decayed = np.r_[0:40, 60:110, 160:200]
    exempt = np.r_[40:60, 110:120, 150:160]
    np.testing.assert_array_equal(got[decayed], on[decayed])
    np.testing.assert_array_equal(got[exempt], off[exempt])
    np.testing.assert_array_equal(got[120:150], p0[120:150])
    assert np.abs(on[exempt] - off[exempt]).min() > 0


def _cfg(opt, decay_biases, wd=None):
    cfg = opt.get_config()
    cfg["decay_biases"] = decay_biases
    if wd is not None:
        cfg["weight_decay"] = wd
    return optim.get(cfg)


def test_model_marks_biases_and_norm_parameters_as_no_decay():
    m = nbcnn.Sequential([L.Conv2D(3, 3, input_shape=(2, 6, 6)), L.Flatten(), L.Dense(4), L.Dense(2)], seed=0)
    m.compile(optimizer=optim.SGD(0.1, weight_decay=0.5, decay_biases=False))
    x = np.random.default_rng(0).random((4, 2, 6, 6), dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    before = m.get_weights()
    m._update_trainable()
    # conv kernel 3*2*3*3 = 54, bias 3; dense 48*4 = 192 + 4; dense 4*2 + 2
    assert m._no_decay == [(54, 57), (249, 253), (261, 263)]
    m.train_on_batch(x, y)
    ref = nbcnn.Sequential([L.Conv2D(3, 3, input_shape=(2, 6, 6)), L.Flatten(), L.Dense(4), L.Dense(2)], seed=0)
    ref.compile(optimizer=optim.SGD(0.1, weight_decay=0.5))
    ref.train_on_batch(x, y)
    for w0, a, b in zip(before, m.get_weights(), ref.get_weights()):
        if w0.ndim == 1:  # without decay: b = a - lr*wd*w0 exactly what decay adds
            np.testing.assert_allclose(a - b, 0.1 * 0.5 * w0, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


# -- label smoothing ---------------------------------------------------------------------------

def _ref_smoothed(z, t, eps):
    z = z.astype(np.float64)
    k = z.shape[1]
    t = (1 - eps) * t + eps / k
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    loss = (lse - (t * z).sum(1)).mean()
    sm = np.exp(z - lse[:, None])
    return loss, (sm - t) / z.shape[0]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_reference(rng, eps):
    z = rng.normal(0, 3, (7, 5))
    y = rng.integers(0, 5, 7)
    onehot = np.eye(5)[y]
    ce = losses.CrossEntropy(label_smoothing=eps)
    lr_, gr = _ref_smoothed(z, onehot, eps)
    lo, go = ce.loss_and_grad(z, y)
    assert math.isclose(lo, lr_, rel_tol=1e-12)
    np.testing.assert_allclose(go, gr, atol=1e-14)
    soft = rng.dirichlet(np.ones(5), 7)
    ls, gs = ce.loss_and_grad(z, soft)
    lsr, gsr = _ref_smoothed(z, soft, eps)
    assert math.isclose(ls, lsr, rel_tol=1e-12)
    np.testing.assert_allclose(gs, gsr, atol=1e-14)
    # the gradient is the derivative of the reported loss (central differences)
    h = 1e-6
    for i, j in [(0, 0), (3, 2), (6, 4)]:
        zp, zm = z.copy(), z.copy()
        zp[i, j] += h
        zm[i, j] -= h
        fd = (ce(zp, y) - ce(zm, y)) / (2 * h)
        assert math.isclose(fd, go[i, j], rel_tol=1e-5, abs_tol=1e-9)


def test_label_smoothing_arguments_and_config():
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.CrossEntropy(label_smoothing=1.0)
    assert losses.CrossEntropy().get_config() == "cross_entropy"
    back = losses.get(losses.CrossEntropy(0.2).get_config())
    assert isinstance(back, losses.CrossEntropy) and back.label_smoothing == 0.2


# -- schedules ---------------------------------------------------------------------------------

def test_linear_warmup_values():
    w = optim.LinearWarmup(0.4, 4)
    assert [w(i) for i in range(6)] == [0.1, 0.2, 0.30000000000000004, 0.4, 0.4, 0.4]
    c = optim.CosineDecay(1.0, 10, final=0.0)
    wc = optim.LinearWarmup(c, 5, start=0.5)
    assert wc(0) == 0.5 + 0.5 * 1 / 5 and wc(4) == 1.0
    assert wc(5) == c(0) and math.isclose(wc(10), 0.5) and wc(15) == 0.0 and wc(99) == 0.0
    back = optim._schedule_from(wc.get_config())
    assert isinstance(back.after, optim.CosineDecay) and [back(i) for i in range(20)] == [wc(i) for i in range(20)]
    with pytest.raises(ValueError):
        optim.LinearWarmup(0.1, 0)


def test_one_cycle_values():
    s = optim.OneCycle(1.0, 100, pct_start=0.25, div_factor=10, final_div_factor=100)
    lo, end1 = 0.1, 24.0  # max/div; pct_start * total - 1
    assert math.isclose(s(0), lo) and math.isclose(s(24), 1.0)
    assert math.isclose(s(12), lo + (1 - lo) * (1 - math.cos(math.pi * 12 / end1)) / 2)
    assert math.isclose(s(99), lo / 100) and math.isclose(s(500), lo / 100)
    mid = 24 + (99 - 24) / 2
    assert math.isclose(s(mid), (1.0 + lo / 100) / 2)
    lin = optim.OneCycle(1.0, 100, pct_start=0.25, div_factor=10, final_div_factor=100, anneal="linear")
    assert math.isclose(lin(12), lo + (1 - lo) * 0.5) and math.isclose(lin(mid), (1.0 + lo / 100) / 2)
    assert optim._schedule_from(s.get_config())(37) == s(37)
    for bad in (dict(total_steps=1), dict(pct_start=1.0), dict(anneal="exp")):
        with pytest.raises(ValueError):
            optim.OneCycle(**{"max_lr": 1.0, "total_steps": 100, **bad})


def test_one_cycle_matches_torch():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=57, pct_start=0.3,
                                              cycle_momentum=False)
    ours = optim.OneCycle(0.3, 57, pct_start=0.3)
    for step in range(57):
        assert math.isclose(opt.param_groups[0]["lr"], ours(step), rel_tol=1e-12, abs_tol=1e-15), step
        opt.step()
        sch.step()


# -- torch.optim as an extra oracle --------------------------------------------------------------

_TORCH_CASES = [
    ("sgd-nesterov", lambda: optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
     lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("adamw", lambda: optim.AdamW(0.01, weight_decay=0.05),
     lambda t, ps: t.optim.AdamW(ps, lr=0.01, weight_decay=0.05)),
    ("rmsprop", lambda: optim.RMSprop(0.01, rho=0.9, momentum=0.5, centered=True, weight_decay=1e-3),
     lambda t, ps: t.optim.RMSprop(ps, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-3)),
    ("adamw-clip", lambda: optim.AdamW(0.01, weight_decay=0.05, clipnorm=0.7),
     lambda t, ps: t.optim.AdamW(ps, lr=0.01, weight_decay=0.05)),
]


@pytest.mark.parametrize("name,ours,theirs", _TORCH_CASES, ids=[c[0] for c in _TORCH_CASES])
def test_against_torch_optim(rng, name, ours, theirs):
    torch = pytest.importorskip("torch")
    p0 = rng.normal(0, 1, 513)
    grads = [rng.normal(0, 1, 513) for _ in range(5)]
    got = _run(ours(), p0, grads)
    w = torch.nn.Parameter(torch.tensor(p0))
    opt = theirs(torch, [w])
    for g in grads:
        w.grad = torch.tensor(g.copy())
        if "clip" in name:
            torch.nn.utils.clip_grad_norm_([w], 0.7)
        opt.step()
    np.testing.assert_allclose(got, w.detach().numpy(), rtol=1e-9, atol=1e-11)


def test_label_smoothing_matches_torch(rng):
    torch = pytest.importorskip("torch")
    z = rng.normal(0, 2, (9, 6))
    y = rng.integers(0, 6, 9)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.CrossEntropyLoss(label_smoothing=0.15)(zt, torch.tensor(y))
    lt.backward()
    lo, go = losses.CrossEntropy(0.15).loss_and_grad(z, y)
    assert math.isclose(lo, lt.item(), rel_tol=1e-12)
    np.testing.assert_allclose(go, zt.grad.numpy(), atol=1e-14)


# -- checkpoints -------------------------------------------------------------------------------

_RESUME = [
    lambda: optim.SGD(optim.LinearWarmup(optim.CosineDecay(0.1, 6), 2), momentum=0.9, nesterov=True,
                      weight_decay=5e-4, decay_biases=False, clipnorm=1.0),
    lambda: optim.AdamW(optim.OneCycle(0.01, 8), weight_decay=0.05, clipnorm=0.5),
    lambda: optim.RMSprop(0.005, momentum=0.9, centered=True),
]


@pytest.mark.parametrize("make", _RESUME, ids=["sgd-nesterov", "adamw-onecycle", "rmsprop"])
def test_save_load_resumes_bit_exactly(tmp_path, make):
    r = np.random.default_rng(3)
    x = r.random((12, 1, 7, 7), dtype=np.float32)
    y = r.integers(0, 3, 12)

    def model():
        m = nbcnn.Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(1, 7, 7)), L.Flatten(),
                              L.Dense(3)], seed=5)
        m.compile(loss=losses.CrossEntropy(label_smoothing=0.1), optimizer=make())
        return m

    a = model()
    for i in range(4):
        a.train_on_batch(x[i::4], y[i::4])
    b = model()
    for i in range(2):
        b.train_on_batch(x[i::4], y[i::4])
    b.save(tmp_path / "half.nbcnn")
    c = nbcnn.load_model(tmp_path / "half.nbcnn")
    assert c.optimizer.get_config() == b.optimizer.get_config()
    assert isinstance(c.loss, losses.CrossEntropy) and c.loss.label_smoothing == 0.1
    assert c.optimizer.iterations == 2 and c.optimizer.current_lr == b.optimizer.current_lr
    for i in range(2, 4):
        c.train_on_batch(x[i::4], y[i::4])
    for wa, wc in zip(a.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(wa, wc)
    sa, sc = a.optimizer.get_state(), c.optimizer.get_state()
    assert sa[0] == sc[0] and sorted(sa[1]) == sorted(sc[1])
    for k in sa[1]:
        np.testing.assert_array_equal(sa[1][k], sc[1][k])


def test_bad_training_aid_arguments():
    for bad in (lambda: optim.SGD(0.1, clipnorm=0), lambda: optim.RMSprop(0.1, rho=1.0),
                lambda: optim.RMSprop(0.1, epsilon=0), lambda: optim.AdamW(0.1, weight_decay=-0.1)):
        with pytest.raises(ValueError):
            bad()
    assert isinstance(optim.get("adamw"), optim.AdamW) and isinstance(optim.get("RMSprop"), optim.RMSprop)
    assert optim.get("adamw").weight_decay == 0.01
