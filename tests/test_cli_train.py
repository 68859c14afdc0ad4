"""``nbcnn train / evaluate / predict / summary`` through click's CliRunner, on tiny real subsets.

Each training run uses a few hundred images and LeNet-5, so the whole file
costs seconds once the kernels are compiled. Real data comes from
NBCNN_DATA; without it the bundled MNIST sample (always installed) is used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nbcnn
from nbcnn.cli.main import cli

TINY = ["--train-size", "300", "--test-size", "100", "--batch-size", "50", "--val-split", "0.2",
        "--seed", "7"]


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """No downloads; the cache points at an empty folder (real data still via NBCNN_DATA)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NBCNN_OFFLINE", "1")
    mp.setenv("NBCNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("NBCNN_DEVICE", raising=False)
    yield
    mp.undo()


@pytest.fixture
def runner(offline_env):
    return CliRunner()


def _mnist_test(n):
    (_, _), (xt, yt) = nbcnn.datasets.load_mnist(quiet=True)
    return xt[:n], yt[:n].astype(np.int64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, offline_env):
    """One tiny trained LeNet-5 shared by the evaluate/predict tests."""
    d = tmp_path_factory.mktemp("trained")
    res = CliRunner().invoke(cli, ["train", "--epochs", "1", *TINY, "--out", str(d / "m.nbcnn")])
    assert res.exit_code == 0, res.output
    return d / "m.nbcnn", res


def _same_weights(a, b):
    wa, wb = nbcnn.load_model(a).get_weights(), nbcnn.load_model(b).get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


# ---------------------------------------------------------------- train

def test_train_writes_model_metrics_and_curves(trained):
    path, res = trained
    out = res.output
    assert "Training lenet5 (relu, max-pooling, 61,706 parameters) on mnist" in out
    assert "adam lr 0.002 with cosine decay, batch 50, 1 epoch, seed 7" in out
    assert "240 train / 60 validation / 100 test images" in out
    assert "epoch 1/1  loss " in out and "val_acc " in out
    assert "\r" not in out and "\x1b[" not in out  # not a terminal: no progress bar, no colours
    metrics = json.loads(path.with_name("m.metrics.json").read_text())
    h = metrics["history"]
    assert len(h["loss"]) == len(h["val_accuracy"]) == 1
    assert metrics["epochs"] == 1 and metrics["seed"] == 7 and metrics["parameters"] == 61706
    # The reported test accuracy is what the saved model really scores on those images.
    model = nbcnn.load_model(path)
    xt, yt = _mnist_test(100)
    pred = model.predict(xt).argmax(axis=1)
    assert metrics["test"]["accuracy"] == pytest.approx(float(np.mean(pred == yt)))
    assert f"test accuracy {metrics['test']['accuracy']:.2%}" in out
    # The validation line is the last 60 of the first 300 training images (Keras' validation_split).
    (xtr, ytr), _ = nbcnn.datasets.load_mnist(quiet=True)
    pv = model.predict(xtr[240:300]).argmax(axis=1)
    assert h["val_accuracy"][-1] == pytest.approx(float(np.mean(pv == ytr[240:300])))
    assert f"val_acc {h['val_accuracy'][-1]:.2%}" in out
    assert model.metadata["dataset"] == "mnist"
    assert not path.with_name("m.ckpt.nbcnn").exists()  # the checkpoint is gone once the model is written
    if nbcnn.plots.matplotlib_available():
        from PIL import Image

        with Image.open(path.with_name("m.curves.png")) as im:
            assert im.format == "PNG"


def test_train_same_seed_same_weights(runner, tmp_path, trained):
    path, _ = trained
    res = runner.invoke(cli, ["train", "--epochs", "1", *TINY, "--out", str(tmp_path / "again.nbcnn"), "--no-plot"])
    assert res.exit_code == 0, res.output
    assert _same_weights(path, tmp_path / "again.nbcnn")


@pytest.mark.parametrize("n_batches", [5, 3], ids=["end-of-epoch-1", "mid-epoch-1"])
def test_ctrl_c_then_resume_matches_an_uninterrupted_run(runner, tmp_path, monkeypatch, n_batches):
    """A real SIGINT (sent by the test hook after N batches) -> checkpoint -> --resume -> same bits.

    240 training images at batch 50 make 5 batches per epoch: N=5 stops at the
    end of epoch 1, N=3 in its middle.
    """
    args = ["train", "--epochs", "2", *TINY, "--no-plot"]
    res = runner.invoke(cli, [*args, "--out", str(tmp_path / "full.nbcnn")])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("NBCNN_TEST_INTERRUPT_AFTER", str(n_batches))
    res = runner.invoke(cli, [*args, "--out", str(tmp_path / "cut.nbcnn")])
    assert res.exit_code == 130, res.output
    ckpt = tmp_path / "cut.ckpt.nbcnn"
    assert ckpt.exists() and not (tmp_path / "cut.nbcnn").exists()
    assert f"Resume with: nbcnn train --resume {ckpt}" in res.output
    monkeypatch.delenv("NBCNN_TEST_INTERRUPT_AFTER")
    res = runner.invoke(cli, ["train", "--resume", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert "Resuming from" in res.output
    assert _same_weights(tmp_path / "full.nbcnn", tmp_path / "cut.nbcnn")
    full = json.loads((tmp_path / "full.metrics.json").read_text())
    cut = json.loads((tmp_path / "cut.metrics.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert full["history"][key] == cut["history"][key], key
    assert full["test"] == cut["test"]
    assert not ckpt.exists()


def test_online_augmentation_resumes_exactly_whatever_the_worker_count(runner, tmp_path, monkeypatch):
    """--augment batches depend on the seed only: in-process straight == Ctrl-C with a worker + resume."""
    import multiprocessing

    args = ["train", "--epochs", "2", *TINY, "--no-plot", "--augment", "rotate=8,crop=2"]
    res = runner.invoke(cli, [*args, "--workers", "0", "--out", str(tmp_path / "w0.nbcnn")])
    assert res.exit_code == 0, res.output
    assert "augment rotate=8,crop=2 with 0 workers" in res.output
    monkeypatch.setenv("NBCNN_TEST_INTERRUPT_AFTER", "7")
    res = runner.invoke(cli, [*args, "--workers", "1", "--out", str(tmp_path / "w1.nbcnn")])
    assert res.exit_code == 130, res.output
    assert multiprocessing.active_children() == []  # the worker was stopped, not left behind
    monkeypatch.delenv("NBCNN_TEST_INTERRUPT_AFTER")
    res = runner.invoke(cli, ["train", "--resume", str(tmp_path / "w1.ckpt.nbcnn"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert _same_weights(tmp_path / "w0.nbcnn", tmp_path / "w1.nbcnn")
    # ... and the distortions really changed the training: the same batches undistorted give other weights.
    res = runner.invoke(cli, ["train", "--epochs", "2", *TINY, "--no-plot", "--augment", "none", "--workers", "0",
                              "--out", str(tmp_path / "plain.nbcnn")])
    assert res.exit_code == 0, res.output
    assert not _same_weights(tmp_path / "w0.nbcnn", tmp_path / "plain.nbcnn")


def test_resume_a_finished_model_for_more_epochs(runner, tmp_path):
    """With a constant rate, 1 epoch + 1 more == 2 epochs; a cosine schedule would end after epoch 1 (a notice says so)."""
    constant = [*TINY, "--schedule", "constant", "--no-plot"]
    res = runner.invoke(cli, ["train", "--epochs", "1", *constant, "--out", str(tmp_path / "one.nbcnn")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", "--epochs", "2", *constant, "--out", str(tmp_path / "two.nbcnn")])
    assert res.exit_code == 0, res.output
    longer = tmp_path / "longer.nbcnn"
    res = runner.invoke(cli, ["train", "--resume", str(tmp_path / "one.nbcnn"), "--epochs", "2", "--out", str(longer)])
    assert res.exit_code == 0, res.output
    assert "epoch 2/2" in res.output and "epoch 1/2" not in res.output
    assert "schedule" not in res.output
    assert _same_weights(tmp_path / "two.nbcnn", longer)


def test_resume_past_a_finished_cosine_schedule_is_refused(runner, trained, tmp_path):
    """The cosine rate reached 0 at the end of the run: more epochs would not change the weights."""
    path, _ = trained  # 1 epoch, cosine decay over that epoch
    before = path.read_bytes()
    res = runner.invoke(cli, ["train", "--resume", str(path), "--epochs", "2", "--no-plot"])
    assert res.exit_code == 1, res.output
    assert "ended at epoch 1 with rate 0, so epochs 2-2 would not change the weights" in res.output
    assert path.read_bytes() == before and not path.with_name("m.ckpt.nbcnn").exists()


def test_train_on_the_bundled_sample_with_a_notice(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("NBCNN_DATA", str(tmp_path / "empty"))
    res = runner.invoke(cli, ["train", "--epochs", "1", "--train-size", "100", "--test-size", "50",
                              "--no-plot", "--out", str(tmp_path / "s.nbcnn")])
    assert res.exit_code == 0, res.output
    assert "using the bundled sample" in res.output  # the library's one-line notice (stderr)
    assert "on mnist (bundled sample):" in res.output  # and the banner
    assert json.loads((tmp_path / "s.metrics.json").read_text())["bundled_sample"] is True


def test_train_defaults(runner, tmp_path, monkeypatch):
    """No options: LeNet-5 on MNIST written to ./lenet5-mnist.nbcnn (checked on the option defaults and a
    1-epoch run on a few images, not a full 15-epoch run)."""
    from nbcnn.cli.train import train

    defaults = {p.name: p.default for p in train.params}
    assert defaults["model"] == "lenet5" and defaults["dataset"] == "mnist"
    assert defaults["epochs"] >= 1 and defaults["out"] is None
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli, ["train", "--epochs", "1", "--train-size", "100", "--test-size", "20", "--no-plot"])
    assert res.exit_code == 0, res.output
    assert Path("lenet5-mnist.nbcnn").exists() and Path("lenet5-mnist.metrics.json").exists()
    assert "seed " in res.output  # a fresh seed is printed so the run can be repeated


@pytest.mark.parametrize("args, code, text", [
    (["--optimizer", "lbfgs"], 2, "'lbfgs' is not one of"),
    (["--epochs", "0"], 2, "0 is not in the range"),
    (["--model", "resnet50"], 1, "unknown model 'resnet50'"),
    (["--model", "vgg16"], 1, "cannot take mnist's 1x28x28 images"),
    (["--data-dir", "/nonexistent/folder"], 1, "data folder not found"),
    (["--resume", "/nonexistent/ckpt.nbcnn"], 1, "model file not found"),
    (["--augment", "spin=3"], 1, "unknown augmentation 'spin'"),
    (["--dataset", "fashion-mnist", "--data-dir", "."], 1, "no fashion-mnist data there"),
])
def test_train_user_errors_are_one_line(runner, tmp_path, monkeypatch, args, code, text):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli, ["train", "--epochs", "1", "--train-size", "100", *args])
    assert res.exit_code == code, res.output
    assert text in res.output
    assert "Traceback" not in res.output
    if code == 1:
        assert res.output.strip().splitlines()[-1].startswith("Error: ")


def test_train_out_in_a_new_folder_and_an_impossible_one(runner, tmp_path):
    res = runner.invoke(cli, ["train", "--epochs", "1", "--train-size", "60", "--test-size", "10", "--no-plot",
                              "--out", str(tmp_path / "new" / "sub" / "m.nbcnn")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "sub" / "m.nbcnn").exists()
    (tmp_path / "file").write_text("x")
    res = runner.invoke(cli, ["train", "--out", str(tmp_path / "file" / "m.nbcnn")])
    assert res.exit_code == 1 and "cannot create the folder for --out" in res.output
    assert "Training" not in res.output  # failed before any work


def test_train_device_cuda_without_gpu(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(nbcnn.device, "gpu_status", lambda: (False, "no GPU here (test)"))
    monkeypatch.setattr(nbcnn.device, "cuda_simulator_enabled", lambda: False)
    res = runner.invoke(cli, ["train", "--device", "cuda", "--out", str(tmp_path / "x.nbcnn")])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: device cuda:0 is not usable: no GPU here (test)"


def test_resume_rejects_a_changed_run_and_foreign_files(runner, trained, tmp_path):
    path, _ = trained
    res = runner.invoke(cli, ["train", "--resume", str(path), "--epochs", "2", "--batch-size", "64"])
    assert res.exit_code == 1 and "--batch-size 50" in res.output
    plain = tmp_path / "plain.nbcnn"
    nbcnn.zoo.lenet5(seed=0).save(plain)
    res = runner.invoke(cli, ["train", "--resume", str(plain)])
    assert res.exit_code == 1 and "has no nbcnn training state" in res.output


# ---------------------------------------------------------------- evaluate

def test_evaluate_reports_true_accuracy_table_and_confusion(runner, trained, tmp_path):
    path, _ = trained
    js = tmp_path / "ev.json"
    png = tmp_path / "cm.png"
    res = runner.invoke(cli, ["evaluate", str(path), "--limit", "200", "--json", str(js), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    report = json.loads(js.read_text())
    xt, yt = _mnist_test(200)
    probs = nbcnn.load_model(path).predict(xt)
    pred = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(float(np.mean(pred == yt)))
    assert report["loss"] == pytest.approx(float(-np.mean(np.log(probs[np.arange(200), yt]))), rel=1e-5)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 200 and np.trace(cm) == int(np.sum(pred == yt))
    for row in report["per_class"]:
        k = row["class"]
        assert row["support"] == int(np.sum(yt == k))
        assert row["errors"] == int(np.sum((yt == k) & (pred != k)))
    assert f"accuracy  {report['accuracy']:.2%}" in res.output
    assert len([ln for ln in res.output.splitlines() if ln[:1].isdigit()]) == 10  # one row per digit
    if nbcnn.plots.matplotlib_available():
        assert png.exists()


def test_evaluate_json_to_stdout(runner, trained):
    path, _ = trained
    res = runner.invoke(cli, ["evaluate", str(path), "--limit", "50", "--json", "-", "--no-plot"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 50


def test_evaluate_errors(runner, tmp_path):
    res = runner.invoke(cli, ["evaluate", str(tmp_path / "missing.nbcnn")])
    assert res.exit_code == 1 and "model file not found" in res.output
    bad = tmp_path / "bad.nbcnn"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    res = runner.invoke(cli, ["evaluate", str(bad)])
    assert res.exit_code == 1 and res.output.startswith("Error: cannot load model") and "bad.nbcnn" in res.output
    # A model for 32x32 inputs cannot be evaluated on 28x28 MNIST.
    m32 = tmp_path / "m32.nbcnn"
    nbcnn.zoo.lenet5(input_shape=(1, 32, 32), seed=0).save(m32)
    res = runner.invoke(cli, ["evaluate", str(m32), "--limit", "10"])
    assert res.exit_code == 1 and "expects inputs of shape (1, 32, 32)" in res.output


def test_evaluate_a_model_of_a_class_subset(runner, tmp_path):
    """A model saved with metadata classes=[...] (as `nbcnn transfer` writes) is evaluated on those classes."""
    path = tmp_path / "sub.nbcnn"
    model = nbcnn.zoo.lenet5(num_classes=3, seed=1)
    model.compile(optimizer="adam")
    model.save(path, metadata={"dataset": "mnist", "classes": [0, 1, 7], "class_names": ["zero", "one", "seven"]})
    js = tmp_path / "sub.json"
    res = runner.invoke(cli, ["evaluate", str(path), "--limit", "60", "--json", str(js), "--no-plot"])
    assert res.exit_code == 0, res.output
    xt, yt = _mnist_test(10000)
    keep = np.isin(yt, [0, 1, 7])
    xs, ys = xt[keep][:60], np.searchsorted([0, 1, 7], yt[keep][:60])
    report = json.loads(js.read_text())
    assert report["images"] == 60
    assert [r["label"] for r in report["per_class"]] == ["zero", "one", "seven"]
    assert [r["support"] for r in report["per_class"]] == [int(np.sum(ys == k)) for k in range(3)]
    pred = nbcnn.load_model(path).predict(xs).argmax(axis=1)
    assert report["accuracy"] == pytest.approx(float(np.mean(pred == ys)))
    # Without the subset in its metadata, a 3-output model cannot be scored on 10-class MNIST.
    nbcnn.zoo.lenet5(num_classes=3, seed=1).save(tmp_path / "three.nbcnn")
    res = runner.invoke(cli, ["evaluate", str(tmp_path / "three.nbcnn"), "--limit", "50", "--no-plot"])
    assert res.exit_code == 1 and "the model has 3 outputs" in res.output


# ---------------------------------------------------------------- predict

def test_predict_images_and_arrays(runner, trained, tmp_path):
    from PIL import Image

    path, _ = trained
    xt, _ = _mnist_test(3)
    np.save(tmp_path / "three.npy", xt)
    Image.fromarray(xt[0, 0]).save(tmp_path / "digit.png")
    res = runner.invoke(cli, ["predict", str(path), str(tmp_path / "three.npy"), str(tmp_path / "digit.png"),
                              "--json", "-", "-k", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["input"].rsplit("/", 1)[-1] for r in out] == ["three.npy[0]", "three.npy[1]", "three.npy[2]",
                                                            "digit.png"]
    probs = nbcnn.load_model(path).predict(xt)
    for r, p in zip(out, probs):
        top = np.argsort(-p, kind="stable")[:3]
        assert [t["class"] for t in r["top"]] == top.tolist()
        assert [t["probability"] for t in r["top"]] == pytest.approx(p[top].tolist())
    # The PNG holds the same pixels as the first array (batch size may change the last bits).
    assert [t["class"] for t in out[3]["top"]] == [t["class"] for t in out[0]["top"]]
    assert [t["probability"] for t in out[3]["top"]] == pytest.approx([t["probability"] for t in out[0]["top"]])
    res = runner.invoke(cli, ["predict", str(path), str(tmp_path / "digit.png"), "-k", "2"])
    assert res.exit_code == 0
    assert res.output.startswith(str(tmp_path / "digit.png")) and res.output.count("%") == 2


def test_predict_errors(runner, trained, tmp_path, monkeypatch):
    path, _ = trained
    np.save(tmp_path / "rgb.npy", np.zeros((3, 32, 32), np.float32))
    res = runner.invoke(cli, ["predict", str(path), str(tmp_path / "rgb.npy")])
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: {tmp_path / 'rgb.npy'} has shape (3, 32, 32) but the model expects "
                                  "(1, 28, 28) per sample (or a batch (N, 1, 28, 28))")
    res = runner.invoke(cli, ["predict", str(path), str(tmp_path / "nope.png")])
    assert res.exit_code == 1 and "input file not found" in res.output
    res = runner.invoke(cli, ["predict", str(path)])
    assert res.exit_code == 2 and "Missing argument" in res.output
    monkeypatch.setattr(nbcnn.device, "gpu_status", lambda: (False, "no GPU here (test)"))
    monkeypatch.setattr(nbcnn.device, "cuda_simulator_enabled", lambda: False)
    res = runner.invoke(cli, ["predict", str(path), str(tmp_path / "rgb.npy"), "--device", "cuda"])
    assert res.exit_code == 1 and "not usable: no GPU here (test)" in res.output


# ---------------------------------------------------------------- summary

def test_summary_zoo_names_and_files(runner, trained):
    res = runner.invoke(cli, ["summary", "lenet5"])
    assert res.exit_code == 0, res.output
    assert "Total params: 61,706" in res.output and "Output Shape" in res.output
    res = runner.invoke(cli, ["summary", "vgg16"])
    assert res.exit_code == 0 and "Total params: 138,357,544" in res.output
    res = runner.invoke(cli, ["summary", "alexnet", "--classes", "10"])
    assert res.exit_code == 0 and "(None, 10)" in res.output
    path, _ = trained
    res = runner.invoke(cli, ["summary", str(path)])
    assert res.exit_code == 0 and "Total params: 61,706" in res.output
    res = runner.invoke(cli, ["summary", "resnet"])
    assert res.exit_code == 1 and "unknown model 'resnet'" in res.output and "lenet5" in res.output


def test_a_fresh_run_says_it_replaces_an_interrupted_one(runner, tmp_path, monkeypatch):
    args = ["train", "--epochs", "1", "--train-size", "120", "--test-size", "10", "--batch-size", "40", "--no-plot",
            "--out", str(tmp_path / "r.nbcnn")]
    monkeypatch.setenv("NBCNN_TEST_INTERRUPT_AFTER", "1")
    assert runner.invoke(cli, args).exit_code == 130
    monkeypatch.delenv("NBCNN_TEST_INTERRUPT_AFTER")
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'r.ckpt.nbcnn'} (an interrupted run) will be replaced" in res.output
    assert f"nbcnn train --resume {tmp_path / 'r.ckpt.nbcnn'}" in res.output
