"""Sequential: summary, freezing, seeding, resume, callbacks, input validation, real MNIST training."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import nbcnn
from nbcnn import callbacks as cbs
from nbcnn import layers as L
from nbcnn import optim, zoo
from _data import data_dir

LENET5_SUMMARY = """\
Model: "lenet5"
___________________________________________________________________
 Layer (type)                Output Shape              Param #
===================================================================
 conv2d_1 (Conv2D)           (None, 6, 28, 28)         156

 avg_pool2d_1 (AvgPool2D)    (None, 6, 14, 14)         0

 conv2d_2 (Conv2D)           (None, 16, 10, 10)        2,416

 avg_pool2d_2 (AvgPool2D)    (None, 16, 5, 5)          0

 flatten_1 (Flatten)         (None, 400)               0

 dense_1 (Dense)             (None, 120)               48,120

 dense_2 (Dense)             (None, 84)                10,164

 dense_3 (Dense)             (None, 10)                850
===================================================================
Total params: 61,706
Trainable params: 61,706
Non-trainable params: 0
___________________________________________________________________"""


def _small(seed=0, dropout=0.0):
    layers = [L.Conv2D(4, 3, padding=1, activation="relu", input_shape=(1, 8, 8)), L.MaxPool2D(2),
              L.Flatten(), L.Dense(16, activation="tanh")]
    if dropout:
        layers.append(L.Dropout(dropout))
    layers.append(L.Dense(3))
    return nbcnn.Sequential(layers, device="cpu", seed=seed)


def _toy_data(n=96, seed=0):
    """Three separable classes: a bright blob in one of three places."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    x = r.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 1 + 2 * c:3 + 2 * c, 2:6] += 2.0
    return x, y


def test_summary_text_lenet5():
    printed = []
    text = zoo.lenet5().summary(print_fn=printed.append)
    assert text == LENET5_SUMMARY
    assert printed == [LENET5_SUMMARY]


def test_train_on_batch_reduces_loss_and_predict_gives_probabilities():
    x, y = _toy_data()
    m = _small()
    m.compile(optimizer=optim.SGD(0.1, momentum=0.9))
    losses = [m.train_on_batch(x, y) for _ in range(30)]
    assert isinstance(losses[0], float)
    assert losses[-1] < 0.3 * losses[0]
    p = m.predict(x)
    assert p.shape == (96, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert (p.argmax(1) == y).mean() > 0.9
    ev = m.evaluate(x, y, batch_size=7)
    assert set(ev) == {"loss", "accuracy"} and ev["accuracy"] > 0.9


def test_uint8_inputs_are_scaled_like_to_float():
    r = np.random.default_rng(1)
    x8 = r.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    m = _small()
    np.testing.assert_array_equal(m.predict(x8), m.predict(nbcnn.datasets.to_float(x8)))
    np.testing.assert_array_equal(m.predict(x8[:, 0]), m.predict(x8))  # (N, H, W) for 1-channel models


def test_freezing_takes_effect_at_next_step_without_recompiling():
    x, y = _toy_data()
    m = _small()
    m.compile(optimizer=optim.Adam(0.01))
    m.train_on_batch(x, y)
    conv = m.layers[0]
    conv.trainable = False
    frozen = conv.get_weights()
    head = m.layers[-1].get_weights()
    for _ in range(3):
        m.train_on_batch(x, y)
    for a, b in zip(frozen, conv.get_weights()):
        assert np.array_equal(a, b)  # bit-identical
    assert not np.array_equal(head[0], m.layers[-1].get_weights()[0])
    text = m.summary(print_fn=None)
    assert "Non-trainable params: 40" in text and f"Trainable params: {m.count_params() - 40:,}" in text
    # freezing everything but the head: the backward pass stops at the head
    for layer in m.layers[:-1]:
        layer.trainable = False
    before = m.get_weights()
    m.train_on_batch(x, y)
    after = m.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before[:-2], after[:-2]))
    assert not np.array_equal(before[-2], after[-2])
    # unfreezing works at the next step too
    conv.trainable = True
    m.train_on_batch(x, y)
    assert not np.array_equal(frozen[0], conv.get_weights()[0])


def _run(seed, epochs=2, dropout=0.3):
    nbcnn.seed(seed)
    x, y = _toy_data()
    m = _small(seed=None, dropout=dropout)
    m.compile(optimizer=optim.SGD(0.05, momentum=0.9))
    h = m.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return m.get_weights(), h.history["loss"]


def test_seed_makes_cpu_training_reproducible():
    w1, l1 = _run(7)
    w2, l2 = _run(7)
    w3, _ = _run(8)
    assert l1 == l2
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    assert not np.array_equal(w1[0], w3[0])


class _StopAt(cbs.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epochs_ended = []

    def on_batch_end(self, batch, logs=None):
        if (self.model.progress["epoch"], batch) == self.at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_ended.append(epoch)


def test_interrupted_run_resumes_bit_exactly(tmp_path):
    x, y = _toy_data()
    # uninterrupted: 3 epochs with dropout, momentum, shuffling
    ref = _small(seed=11, dropout=0.3)
    ref.compile(optimizer=optim.SGD(0.05, momentum=0.9))
    href = ref.fit(x, y, epochs=3, batch_size=16, verbose=0)
    # interrupted in the middle of epoch 2 (index 1), saved, loaded, resumed
    m = _small(seed=11, dropout=0.3)
    m.compile(optimizer=optim.SGD(0.05, momentum=0.9))
    stop = _StopAt(1, 2)
    h1 = m.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[stop])
    assert stop.epochs_ended == [0]  # the cut epoch does not report partial metrics
    assert m.progress["epoch"] == 1 and m.progress["batch"] == 3
    path = tmp_path / "ckpt.nbcnn"
    m.save(path)
    r = nbcnn.load_model(path, device="cpu")
    h2 = r.fit(x, y, epochs=3, batch_size=16, verbose=0,
               initial_epoch=r.progress["epoch"], initial_batch=r.progress["batch"])
    assert all(np.array_equal(a, b) for a, b in zip(ref.get_weights(), r.get_weights()))
    assert h1.history["loss"] + h2.history["loss"] == href.history["loss"]
    assert r.optimizer.iterations == ref.optimizer.iterations


def test_input_validation_errors():
    x, y = _toy_data(8)
    m = _small()
    m.compile()
    bad = x.copy()
    bad[3, 0, 2, 2] = np.nan
    for call in (lambda: m.fit(bad, y, verbose=0), lambda: m.evaluate(bad, y), lambda: m.predict(bad),
                 lambda: m.train_on_batch(bad, y)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            call()
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 1, 8, 8\), got \(8, 3, 8, 8\)"):
        m.predict(np.zeros((8, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        m.fit(x, np.full(8, 3), verbose=0)
    with pytest.raises(ValueError, match="8 samples but y has 7"):
        m.evaluate(x, y[:7])
    with pytest.raises(RuntimeError, match="compile"):
        _small().fit(x, y)


def test_softmax_tail_is_fused_with_cross_entropy():
    x, y = _toy_data(32)
    a = _small(seed=3)
    b = nbcnn.Sequential([*_small(seed=3).layers, L.Softmax()], device="cpu", seed=3)
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(optimizer=optim.SGD(0.1))
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-6)
    la = [a.train_on_batch(x, y) for _ in range(3)]
    lb = [b.train_on_batch(x, y) for _ in range(3)]
    np.testing.assert_allclose(la, lb, rtol=1e-6)


def test_fit_accepts_a_reiterable_batch_source_and_validation():
    x, y = _toy_data()

    class Batches:
        def __len__(self):
            return 6

        def __iter__(self):
            for i in range(0, 96, 16):
                yield x[i:i + 16], y[i:i + 16]

    m = _small()
    m.compile(optimizer=optim.Adam(0.01))
    h = m.fit(Batches(), epochs=3, validation_data=(x[:32], y[:32]), verbose=0)
    assert set(h.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert len(h.history["loss"]) == 3 and h.history["loss"][-1] < h.history["loss"][0]
    h2 = m.fit(x, y, epochs=1, validation_split=0.25, verbose=0)
    assert "val_accuracy" in h2.history


def test_callbacks_loggers_checkpoint_and_early_stopping(tmp_path):
    x, y = _toy_data()
    m = _small()
    m.compile(optimizer=optim.Adam(0.01))
    csv_path, json_path = tmp_path / "log.csv", tmp_path / "log.json"
    ck = tmp_path / "best.nbcnn"
    m.fit(x, y, epochs=3, batch_size=32, validation_data=(x, y), verbose=0,
          callbacks=[cbs.CSVLogger(csv_path), cbs.JSONLogger(json_path),
                     cbs.ModelCheckpoint(ck, monitor="val_accuracy", save_best_only=True)])
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and "val_loss" in rows[0]
    js = json.loads(json_path.read_text())
    assert [e["epoch"] for e in js["epochs"]] == [1, 2, 3]
    assert np.isclose(float(rows[2]["loss"]), js["epochs"][2]["loss"])
    assert nbcnn.load_model(ck).count_params() == m.count_params()

    # EarlyStopping driven by hand-made logs
    es = cbs.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    es.set_model(m)
    es.on_train_begin()
    w_best = None
    for epoch, v in enumerate([1.0, 0.5, 0.7, 0.6]):
        m.stop_training = False
        if epoch == 1:
            w_best = m.get_weights()
        es.on_epoch_end(epoch, {"val_loss": v})
        m.layers[-1].set_weights([w + 1 for w in m.layers[-1].get_weights()])  # weights keep changing
        if m.stop_training:
            break
    assert epoch == 3 and es.best_epoch == 1
    es.on_train_end()
    assert all(np.array_equal(a, b) for a, b in zip(w_best, m.get_weights()))
    with pytest.raises(ValueError, match="val_loss"):
        es.on_epoch_end(0, {"loss": 1.0})


def test_mse_loss_trains():
    x, y = _toy_data()
    m = _small()
    m.compile(loss="mse", optimizer=optim.SGD(0.2, momentum=0.9))
    h = m.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert m.evaluate(x, y)["accuracy"] > 0.8


@pytest.mark.slow
def test_end_to_end_real_mnist_subset():
    """LeNet-5 on the first 10,000 real MNIST training images for 2 epochs: >= 95% on 2000 test images
    (a linear classifier reaches about 92%, chance is 10%)."""
    data_dir("mnist")
    (xtr, ytr), (xte, yte) = nbcnn.datasets.load_mnist(download=False, allow_sample=False)
    nbcnn.seed(0)
    m = zoo.lenet5(activation="tanh", pooling="max")
    m.compile(optimizer=optim.SGD(0.05, momentum=0.9))
    m.fit(xtr[:10000], ytr[:10000], epochs=2, batch_size=32, verbose=0)
    res = m.evaluate(xte[:2000], yte[:2000])
    assert res["accuracy"] >= 0.95, res


def test_progress_bar_is_silent_when_piped_and_verbose_prints_epoch_lines(capsys):
    import io

    from nbcnn.progress import ProgressBar

    piped = io.StringIO()
    bar = ProgressBar(10, stream=piped)
    for i in range(1, 11):
        bar.update(i, items=64, loss=0.5)
    bar.close()
    assert piped.getvalue() == ""
    tty = io.StringIO()
    bar = ProgressBar(4, prefix="Epoch 1/1", stream=tty, enabled=True, min_interval=0)
    bar.update(2, items=64, loss=0.25)
    assert "Epoch 1/1" in tty.getvalue() and "2/4" in tty.getvalue() and "loss 0.2500" in tty.getvalue()
    x, y = _toy_data(32)
    m = _small()
    m.compile(optimizer=optim.SGD(0.05))
    m.fit(x, y, epochs=2, batch_size=8, verbose=1,
          callbacks=[cbs.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2") and "img/s" in lines[1] and "loss" in lines[1]
    assert "\r" not in out.err  # pytest's capture is not a terminal: no bar
    assert m.optimizer.current_lr == 0.05
