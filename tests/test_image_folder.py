"""Image folders: scanning, decoding of mixed formats and modes, the cache, streaming, bad data."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from nbcnn import imagefolder as imf  # noqa: E402
from nbcnn._datapaths import DatasetError  # noqa: E402

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 60), "red": (200, 10, 30)}


def grey(rgb):
    """ITU-R 601-2 luma, the conversion Pillow documents for RGB -> L."""
    r, g, b = rgb
    return (r * 299 + g * 587 + b * 114) / 1000


def solid(rgb, size, mode):
    im = Image.new("RGB", size, rgb)
    if mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    elif mode == "L":
        im = im.convert("L")
    return im


def make_folder(root: Path, per_class=4, size_jitter=True):
    """Solid-colour images per class in PNG/JPEG/BMP/GIF (+ WebP when Pillow has it), mixed sizes and modes."""
    formats = [("png", "RGBA"), ("jpg", "RGB"), ("bmp", "RGB"), ("gif", "P"), ("png", "RGB")]
    if "WEBP" in Image.SAVE:
        formats.append(("webp", "RGB"))
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            ext, mode = formats[i % len(formats)]
            size = (8 + 3 * i, 6 + 2 * i) if size_jitter else (8, 8)
            kw = {"quality": 100} if ext in ("jpg", "webp") else {}
            solid(rgb, size, mode).save(d / f"img{i}.{ext}", **kw)
    (root / "red" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "red" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "green" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCNN_CACHE_DIR", str(tmp_path / "cache"))


def test_mixed_formats_exact_pixels(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=6)
    ds = imf.image_folder(root, image_size=(5, 7))
    assert ds.class_names == ["blue", "green", "red"]
    assert ds.counts == {"blue": 6, "green": 6, "red": 6}
    assert ds.x.shape == (18, 3, 5, 7) and ds.x.dtype == np.uint8 and not ds.streaming
    for img, label, f in zip(ds.x, ds.y, ds.files):
        want = np.array(COLOURS[ds.class_names[label]], np.float64)[:, None, None]
        tol = 3 if Path(f).suffix in (".jpg", ".webp") else 0  # lossy codecs, a solid colour
        assert np.abs(img - want).max() <= tol, f


def test_grayscale_mode_and_median_size(tmp_path):
    root = make_folder(tmp_path / "p", per_class=3, size_jitter=False)
    ds = imf.image_folder(root, color_mode="grayscale")
    assert ds.x.shape[1:] == (1, 8, 8)  # the median of 8x8 images
    for img, label, f in zip(ds.x, ds.y, ds.files):
        want = grey(COLOURS[ds.class_names[label]])
        tol = 3 if Path(f).suffix in (".jpg", ".webp") else 1
        assert np.abs(img.astype(np.float64) - want).max() <= tol, f


def test_median_size_rounds_and_caps(tmp_path):
    d = tmp_path / "sizes"
    d.mkdir()
    for i, (w, h) in enumerate([(30, 21), (31, 22), (33, 23)]):
        Image.new("RGB", (w, h)).save(d / f"{i}.png")
    assert imf.median_size(sorted(d.iterdir())) == (24, 32)  # 22x31 -> multiples of 4
    assert imf.median_size(sorted(d.iterdir()), cap=16) == (12, 16)


def test_corrupt_file_skipped_with_warning_or_strict_error(tmp_path):
    root = make_folder(tmp_path / "p", per_class=3)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "blue" / "cut.jpg").write_bytes((root / "blue" / "img1.jpg").read_bytes()[:40])
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\):.*(broken\.png|cut\.jpg)"):
        ds = imf.image_folder(root, image_size=4)
    assert ds.num_images == 9 and not any("broken" in str(f) for f in ds.files)
    with pytest.raises(DatasetError, match=r"(broken\.png|cut\.jpg): cannot read image"):
        imf.image_folder(root, image_size=4, strict=True)


def test_bad_trees_are_errors_naming_the_path(tmp_path):
    root = make_folder(tmp_path / "p", per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"p/empty: empty class folder"):
        imf.image_folder(root, image_size=4)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="bare: no class folders"):
        imf.image_folder(bare)
    with pytest.raises(DatasetError, match="no such folder"):
        imf.image_folder(tmp_path / "missing")
    test = tmp_path / "test"
    make_folder(test, per_class=1)
    (test / "zebra").mkdir()
    Image.new("RGB", (4, 4)).save(test / "zebra" / "z.png")
    with pytest.raises(DatasetError, match=r"test/zebra: class 'zebra' is not among the training classes"):
        imf.image_folder(test, image_size=4, class_names=["blue", "green", "red"])


def test_smaller_than_crop_is_an_error(tmp_path):
    root = make_folder(tmp_path / "p", per_class=2)
    with pytest.raises(DatasetError, match=r"img0\.\w+: image is 6x8, smaller than the 7x7 crop"):
        imf.image_folder(root, image_size=8, min_size=7)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_does_not_hang(tmp_path):
    root = make_folder(tmp_path / "p", per_class=2)
    os.symlink(root / "red", root / "red" / "loop")      # red/loop -> red
    (root / "blue" / "sub").mkdir()
    os.symlink(root / "blue", root / "blue" / "sub" / "up")  # blue/sub/up -> blue
    t0 = time.perf_counter()
    names, files, labels = imf.scan_classes(root)
    assert time.perf_counter() - t0 < 5
    assert len(files) == len({os.path.realpath(f) for f in files}) == 6


def test_layout_detection(tmp_path):
    make_folder(tmp_path / "a" / "train", per_class=1)
    make_folder(tmp_path / "a" / "val", per_class=1)
    lay = imf.detect_layout(tmp_path / "a")
    assert lay["kind"] == "split" and lay["val"].name == "val" and lay["test"] is None
    make_folder(tmp_path / "b", per_class=1)
    assert imf.detect_layout(tmp_path / "b")["kind"] == "classes"


def _count_decodes(monkeypatch):
    calls = []
    real = imf._decode_chunk

    def counting(paths, hw, color):
        calls.append(len(paths))
        return real(paths, hw, color)

    monkeypatch.setattr(imf, "_decode_chunk", counting)
    return calls


def test_cache_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "p", per_class=3)
    calls = _count_decodes(monkeypatch)
    a = imf.image_folder(root, image_size=6)
    assert sum(calls) == 9
    b = imf.image_folder(root, image_size=6)
    assert sum(calls) == 9 and np.array_equal(a.x, b.x)          # served from the cache
    imf.image_folder(root, image_size=5)
    assert sum(calls) == 18                                       # another size: another cache
    f = root / "red" / "img0.png"
    solid((1, 2, 3), (8, 6), "RGB").save(f)
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    c = imf.image_folder(root, image_size=6)
    assert sum(calls) == 27                                       # a changed file rebuilds
    i = c.files.index(f)
    assert tuple(c.x[i, :, 0, 0]) == (1, 2, 3)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(root / "red" / "new.png")
    d = imf.image_folder(root, image_size=6)
    assert sum(calls) == 37 and d.num_images == 10                # an added file rebuilds
    (root / "red" / "new.png").unlink()
    assert imf.image_folder(root, image_size=6).num_images == 9   # so does a removed one


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "p", per_class=3)
    monkeypatch.setattr(imf, "_CHUNK", 2)
    real = imf._decode_chunk
    n = [0]

    def dying(paths, hw, color):
        n[0] += 1
        if n[0] == 3:
            raise KeyboardInterrupt
        return real(paths, hw, color)

    monkeypatch.setattr(imf, "_decode_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        imf.image_folder(root, image_size=4)
    base = tmp_path / "cache" / "image-folders"
    assert list(base.iterdir()) == []                             # no partial cache, no temp folder
    monkeypatch.setattr(imf, "_decode_chunk", real)
    ds = imf.image_folder(root, image_size=4)
    assert ds.num_images == 9 and len(list(base.iterdir())) == 1


def test_damaged_cache_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "p", per_class=2)
    ref = imf.image_folder(root, image_size=4)
    (folder,) = (tmp_path / "cache" / "image-folders").iterdir()
    (folder / "meta.json").write_text("{not json")
    again = imf.image_folder(root, image_size=4)
    assert np.array_equal(ref.x, again.x)


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "p", per_class=5)
    serial = imf.image_folder(root, image_size=5, workers=0, cache_dir=tmp_path / "c1")
    monkeypatch.setattr(imf, "_PARALLEL_FROM", 1)
    monkeypatch.setattr(imf, "_CHUNK", 4)
    par = imf.image_folder(root, image_size=5, workers=2, cache_dir=tmp_path / "c2")
    assert np.array_equal(serial.x, par.x) and np.array_equal(serial.y, par.y)


def test_streamed_equals_in_memory(tmp_path):
    root = make_folder(tmp_path / "p", per_class=5)
    mem = imf.image_folder(root, image_size=6, batch_size=4, seed=3)
    st = imf.image_folder(root, image_size=6, batch_size=4, seed=3, in_memory=False)
    assert st.streaming and isinstance(st.x, imf.ImageArray) and st.x.shape == mem.x.shape
    assert np.array_equal(np.asarray(st.x), mem.x)
    assert np.array_equal(st.x[[4, 1, 1, 7]], mem.x[[4, 1, 1, 7]])
    assert np.array_equal(st.x[-1], mem.x[-1]) and np.array_equal(st.x[2:9:3], mem.x[2:9:3])
    assert len(st) == len(mem) == 4
    for (xa, ya), (xb, yb) in zip(st, mem):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    tr, va = st.split(0.4, seed=1)
    tr_m, va_m = mem.split(0.4, seed=1)
    assert tr.streaming and np.array_equal(np.asarray(va.x), va_m.x)
    assert sorted(va.counts.values()) == [2, 2, 2] and tr.num_images + va.num_images == 15
    clone = pickle.loads(pickle.dumps(tr.x))
    assert np.array_equal(np.asarray(clone), tr_m.x)


def test_loader_workers_read_file_backed_rows(tmp_path):
    from nbcnn.loader import AugmentedBatches

    root = make_folder(tmp_path / "p", per_class=4)
    st = imf.image_folder(root, image_size=6, in_memory=False)
    mem = st.arrays()[0]
    a = AugmentedBatches(st.x, st.y, batch_size=5, seed=2, workers=1, to_float=False)
    b = AugmentedBatches(mem, st.y, batch_size=5, seed=2, workers=0, to_float=False)
    try:
        got, ref = list(a), list(b)
    finally:
        a.close()
    assert len(got) == len(ref) == 3
    for (xa, ya), (xb, yb) in zip(got, ref):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_fit_on_a_streamed_folder(tmp_path):
    import nbcnn
    from nbcnn import layers as L

    root = make_folder(tmp_path / "p", per_class=4)
    ds = imf.image_folder(root, image_size=6, batch_size=4, in_memory=False)
    nbcnn.seed(0)
    m = nbcnn.Sequential([L.Flatten(input_shape=(3, 6, 6)), L.Dense(3)])
    m.compile(optimizer="adam")
    h = m.fit(ds, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2 and np.isfinite(h.history["loss"]).all()


STREAM_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from nbcnn.imagefolder import ImageArray, ImageFolder
    path, n = sys.argv[1], int(sys.argv[2])
    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    cap = vm() + (48 << 20)                      # 48 MB above what the interpreter has now
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    x = ImageArray(path, 128, (n, 3, 64, 64))
    ds = ImageFolder(x, np.arange(n) % 10, [str(i) for i in range(10)], batch_size=64, seed=1)
    total = 0
    for xb, yb in ds:
        total += int(xb[:, 0, 0, 0].astype(np.int64).sum())
    want = int(sum(i % 251 for i in range(n)))
    print("ok" if total == want else f"bad {total} {want}")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_streaming_memory_bounded(tmp_path):
    """Stream 96 MB through a process that may not map 48 MB more than it has at start."""
    n = 8192
    path = tmp_path / "big.npy"
    row = 3 * 64 * 64
    with open(path, "wb") as f:
        f.write(b"\x00" * 128)
        block = np.empty((256, row), np.uint8)
        for s in range(0, n, 256):
            block[:] = (np.arange(s, s + 256) % 251)[:, None]
            f.write(block.tobytes())
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(path), str(n)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"
    # the same read as one array needs 96 MB: it must fail under that cap (the limit is real)
    bad = STREAM_SCRIPT.replace("for xb, yb in ds:", "for xb, yb in [(np.asarray(x), None)]:")
    r2 = subprocess.run([sys.executable, "-c", bad, str(path), str(n)], capture_output=True, text=True,
                        timeout=120, env=env)
    assert r2.returncode != 0 and "MemoryError" in r2.stderr
