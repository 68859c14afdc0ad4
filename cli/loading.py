"""Loading what the commands work on: model files, zoo models, data sets and input images.

Each loader turns the library's exceptions into :class:`cli.common.UserError`
messages that name the file and say what to do, and keeps the conventions the
commands share (how pixels become model inputs, class names) in one place, so
``train`` writes exactly what ``evaluate`` and ``predict`` read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import UserError, notice

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
CIFAR = ("cifar10", "cifar100")



def dataset_classes(name: str) -> list[str] | None:
    """Class names of a data set, from ``nbcnn.datasets`` / ``nbcnn.cifar``."""
    from nbcnn import cifar, datasets

    spec = datasets.DATASETS.get(name) or cifar.CIFAR.get(name or "")
    return list(spec["classes"]) if spec and spec.get("classes") else None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# ------------------------------------------------------------------ models

def zoo_names() -> list[str]:
    """Model names the zoo can build (its public functions returning a Sequential)."""
    from nbcnn import zoo

    names = getattr(zoo, "MODELS", None) or getattr(zoo, "__all__", None)
    if names is None:
        names = [n for n in dir(zoo) if not n.startswith("_") and callable(getattr(zoo, n))]
    if isinstance(names, dict):
        names = list(names)
    return [n for n in names if callable(getattr(zoo, n, None))]


def normalise_zoo_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def build_zoo_model(name: str, strict=(), **kwargs):
    """Build ``nbcnn.zoo.<name>(**kwargs)``; only the keyword arguments it accepts are passed,
    except that a value given for a name in ``strict`` must be accepted (a user option)."""
    import inspect

    from nbcnn import zoo

    key = normalise_zoo_name(name)
    names = zoo_names()
    if key not in names:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(names)}")
    fn = getattr(zoo, key)
    try:
        params = inspect.signature(fn).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for k in strict:
            if kwargs.get(k) is not None and not accepts_any and k not in params:
                raise UserError(f"--{k.replace('_', '-')} does not apply to model {key}")
        kwargs = {k: v for k, v in kwargs.items()
                  if v is not None and (accepts_any or k in params)}
    except (TypeError, ValueError):
        pass
    return fn(**kwargs)


def resolve_device(device):
    """``--device`` value -> a usable nbcnn Device (``None`` = ``$NBCNN_DEVICE`` or auto)."""
    import os

    import nbcnn

    return nbcnn.device.parse_device(device or os.environ.get("NBCNN_DEVICE") or "auto")


def load_model_file(path, device=None):
    """``nbcnn.load_model(path)`` (``load_onnx`` for ``.onnx`` files) on ``device``, with one-line
    errors that name the file."""
    import nbcnn

    p = Path(path)
    if not p.exists():
        raise UserError(f"model file not found: {p}")
    if p.is_dir():
        raise UserError(f"expected a model file, got a folder: {p}")
    try:
        if p.suffix.lower() == ".onnx":
            return nbcnn.load_onnx(p, device=resolve_device(device))
        return nbcnn.load_model(p, device=resolve_device(device))
    except UserError:
        raise
    except (ValueError, OSError, KeyError, TypeError) as exc:
        msg = " ".join(str(exc).split())
        if str(p) not in msg and p.name not in msg:
            msg = f"{p}: {msg}"
        raise UserError(f"cannot load model {msg}") from exc


def model_metadata(model) -> dict:
    """The ``metadata=`` dict a model was saved with (empty for a fresh or foreign model)."""
    for attr in ("metadata", "meta"):
        meta = getattr(model, attr, None)
        if isinstance(meta, dict):
            return meta
    return {}


def model_input_shape(model) -> tuple[int, ...] | None:
    """The per-sample input shape ``(C, H, W)`` the model was built for, if it knows it."""
    for attr in ("input_shape",):
        shape = getattr(model, attr, None)
        if shape:
            shape = tuple(int(s) for s in shape if s is not None)
            return shape[-3:] if len(shape) > 3 else shape
    layers = getattr(model, "layers", None) or []
    if layers:
        shape = getattr(layers[0], "input_shape", None)
        if shape:
            return tuple(int(s) for s in shape if s is not None)
    return None


def model_num_classes(model) -> int | None:
    shape = getattr(model, "output_shape", None)
    if shape:
        return int(shape[-1])
    layers = getattr(model, "layers", None) or []
    for layer in reversed(layers):
        units = getattr(layer, "units", None)
        if units:
            return int(units)
        shape = getattr(layer, "output_shape", None)
        if shape and not callable(shape):
            return int(tuple(shape)[-1])
    return None


def class_names_for(model, num_classes: int | None = None, dataset: str | None = None) -> list[str]:
    meta = model_metadata(model)
    names = meta.get("class_names")
    if not names:
        ds = dataset or meta.get("dataset")
        names = dataset_classes(ds) if ds else None
    if num_classes is None:
        num_classes = model_num_classes(model) or (len(names) if names else 10)
    if not names or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return list(names)


# ------------------------------------------------------------------ data sets

def data_kind(name: str, data_dir=None) -> str:
    """What ``--dataset`` / ``--data-dir`` point at: ``"idx"`` (MNIST-style files), ``"cifar10"``,
    ``"cifar100"`` or ``"folder"`` (class sub-folders of images)."""
    from nbcnn import cifar, datasets, imagefolder

    key = (name or "mnist").strip().lower().replace("_", "-")
    if key == "folder":
        return "folder"
    if data_dir is None:
        return key.replace("-", "") if key.replace("-", "") in CIFAR else "idx"
    d = Path(data_dir)
    if not d.exists():
        raise UserError(f"data folder not found: {d}")
    if not d.is_dir():
        raise UserError(f"--data-dir must be a folder, got a file: {d}")
    if key.replace("-", "") in CIFAR:
        return key.replace("-", "")
    if key in datasets.DATASETS and datasets.find_dataset(key, d) is not None:
        return "idx"
    for c in CIFAR:
        if cifar.find_cifar(c, d) is not None:
            return c
    if any(datasets.find_dataset(k, d) for k in datasets.DATASETS):
        return "idx"
    lay = imagefolder.detect_layout(d)
    root = lay["train"] if lay["kind"] == "split" else lay["root"]
    if lay["kind"] == "split" or any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return "folder"  # class sub-folders (their own errors name what is wrong inside)
    return "idx"  # nothing else there: the IDX reader's error says what it looked for


def fixed_input_size(model: str):
    """``[H, W]`` of a zoo model made for one input size (AlexNet, VGG-16/19), else None."""
    import inspect

    from nbcnn import zoo

    fn = getattr(zoo, normalise_zoo_name(model), None)
    try:
        shape = inspect.signature(fn).parameters["input_shape"].default
    except (TypeError, ValueError, KeyError):
        return None
    if normalise_zoo_name(model) in ("alexnet", "vgg16", "vgg19") and shape is not inspect.Parameter.empty:
        return list(shape[1:])
    return None


def default_model(kind: str) -> str:
    """The model ``nbcnn train`` builds when ``--model`` is not given."""
    return "lenet5" if kind == "idx" else "small_cnn"


def load_dataset(name: str, data_dir=None, **folder_opts):
    """``(x_train, y_train), (x_test, y_test), info`` for a named data set.

    ``info`` says where the data came from (``nbcnn.datasets.last_source``);
    when the library falls back to the bundled MNIST sample it prints its own
    one-line notice on stderr. CIFAR and image folders add ``class_names``
    (and a folder with a ``val/`` split ``validation``); see :func:`load_folder`.
    """
    from nbcnn import datasets

    kind = data_kind(name, data_dir)
    if kind == "folder":
        return load_folder(data_dir, **folder_opts)
    if kind in CIFAR:
        return load_cifar(kind, data_dir)
    key = name.strip().lower().replace("_", "-")
    if key not in datasets.DATASETS:
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    try:
        (x_train, y_train), (x_test, y_test) = datasets.load_dataset(key, path=data_dir)
    except (ValueError, OSError) as exc:
        hint = ("; or CIFAR binary batches, or images in one sub-folder per class"
                if data_dir is not None else "")
        raise UserError(" ".join(str(exc).split()) + hint) from exc
    src = dict(getattr(datasets, "last_source", {}) or {})
    info = {"dataset": key, "train_size": int(len(x_train)), "test_size": int(len(x_test)),
            "bundled_sample": src.get("source") == "sample", "source": src.get("source"),
            "location": src.get("location")}
    info["group_size"] = read_augment_info(src.get("location")).get("group_size", 1)
    return (x_train, y_train), (x_test, y_test), info


def load_cifar(kind: str, data_dir=None):
    from nbcnn import cifar

    try:
        tr, te, names = cifar.load_cifar(kind, data_dir)
    except (ValueError, OSError) as exc:
        raise UserError(" ".join(str(exc).split())) from exc
    where = cifar.find_cifar(kind, data_dir)
    info = {"dataset": kind, "kind": kind, "train_size": int(len(tr[0])), "test_size": int(len(te[0])),
            "bundled_sample": False, "source": "path" if data_dir is not None else "cache",
            "location": str(where) if where else None, "group_size": 1, "class_names": names}
    return tr, te, info


def _folder_set(path, class_names, opts, what):
    import warnings

    from nbcnn import imagefolder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = imagefolder.image_folder(path, image_size=opts.get("image_size"),
                                          color_mode=opts.get("color") or "rgb", class_names=class_names,
                                          strict=bool(opts.get("strict")), in_memory=opts.get("in_memory"),
                                          workers=opts.get("workers"))
        except (ValueError, OSError) as exc:
            raise UserError(" ".join(str(exc).split())) from exc
    for w in caught:
        notice(f"Warning: {w.message}" + ("" if opts.get("strict") else " (--strict makes this an error)"))
    return ds


def load_folder(data_dir, image_size=None, color=None, seed=0, val_split=None, test_split=None, strict=False,
                in_memory=None, workers=None, class_names=None, whole=False):
    """Users' images: ``DIR/train`` + ``DIR/test`` (or ``val``), or one level of class folders split by
    ``test_split`` (default 0.2) and seeded. The training set comes back shuffled (seed) so that the
    trainer's tail validation cut is a random sample; ``x`` is an array or a streamed ImageArray.
    ``whole``: the folder is one evaluation set (``evaluate``); it comes back as the test split."""
    from nbcnn import imagefolder

    d = Path(data_dir)
    lay = imagefolder.detect_layout(d)
    opts = {"image_size": image_size, "color": color, "strict": strict, "in_memory": in_memory,
            "workers": workers}
    val = None
    if whole:
        root = (lay["test"] or lay["val"]) if lay["kind"] == "split" else lay["root"]
        test = _folder_set(root, class_names, opts, "test")
        train = None
    elif lay["kind"] == "split":
        if test_split:
            raise UserError(f"--test-split does not apply: {d} has its own "
                            f"{(lay['test'] or lay['val']).name}/ folder")
        train = _folder_set(lay["train"], class_names, opts, "train")
        opts["image_size"] = train.image_shape[1:]
        names = train.class_names
        test = _folder_set(lay["test"] or lay["val"], names, opts, "test")
        if lay["test"] is not None and lay["val"] is not None:
            val = _folder_set(lay["val"], names, opts, "validation")
    else:
        full = _folder_set(lay["root"], class_names, opts, "train")
        frac = 0.2 if test_split is None else float(test_split)
        if frac > 0:
            train, test = full.split(frac, seed=seed)
            if test.num_images == 0:
                raise UserError(f"--test-split {frac:g} leaves no test images out of {full.num_images} in {d}")
        else:
            train, test = full, full.subset(np.arange(0))
    ref = train if train is not None else test
    info = {"dataset": "folder", "kind": "folder", "bundled_sample": False, "source": "path",
            "location": str(d), "group_size": 1, "class_names": ref.class_names,
            "image_size": list(ref.image_shape[1:]), "color": "grayscale" if ref.image_shape[0] == 1 else "rgb",
            "layout": lay["kind"], "streaming": ref.streaming,
            "skipped": sum(len(s.skipped) for s in (train, test, val) if s is not None)}
    if val is not None:
        info["validation"] = (val.x, val.y)
    if train is None:
        return (test.x[:0], test.y[:0]), (test.x, test.y), info
    order = np.random.default_rng(np.random.SeedSequence(int(seed or 0), spawn_key=(11,))).permutation(
        train.num_images)
    x_tr = train.x.view(order) if train.streaming else train.x[order]
    info["train_size"], info["test_size"] = train.num_images, test.num_images
    return (x_tr, train.y[order]), (test.x, test.y), info


def with_input_normalization(model, x_train, device=None):
    """``model`` with a Normalization layer in front, adapted to ``x_train`` (one pass): the model
    file then holds the whole input transform and takes raw images (uint8 -> [0, 1] -> standardised)."""
    import nbcnn
    from nbcnn import layers as L

    shape = model_input_shape(model)
    norm = L.Normalization(input_shape=shape, name="input_normalization").adapt(x_train)
    first = model.layers[0]
    first._input_shape = None  # the new first layer carries the input shape
    return nbcnn.Sequential([norm, *model.layers], device=device or model.device, name=model.name,
                            seed=model.seed)


def is_streamed(x) -> bool:
    """A training set read from the image cache batch by batch (too large to hold in memory)."""
    from nbcnn.imagefolder import ImageArray

    return isinstance(x, ImageArray)


def in_memory(x):
    """Validation and test sets are evaluated from memory (a streamed one is read whole)."""
    return np.asarray(x) if is_streamed(x) else x


def describe_classes(names, splits: dict, limit: int = 20) -> list[str]:
    """Lines naming the classes and the images per class in each split."""
    lines = [f"{len(names)} classes: " + ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")]
    if len(names) <= limit:
        w = max(5, max(len(n) for n in names))
        cols = [k for k, y in splits.items() if y is not None and len(y)]
        lines.append(f"  {'class':<{w}}" + "".join(f"  {c:>10}" for c in cols))
        counts = {k: np.bincount(np.asarray(splits[k], np.int64), minlength=len(names)) for k in cols}
        for i, n in enumerate(names):
            lines.append(f"  {n:<{w}}" + "".join(f"  {int(counts[c][i]):>10,}" for c in cols))
    return lines


AUGMENT_INFO = "augment.json"


def write_augment_info(folder, **info) -> None:
    """Describe an augmented data set written by ``nbcnn augment`` (atomically)."""
    from nbcnn._atomic import write_json

    write_json(Path(folder) / AUGMENT_INFO, info)


def read_augment_info(location) -> dict:
    """The ``augment.json`` beside a data set's files, or {} (none, unreadable or not a dict)."""
    import json

    if not location:
        return {}
    folder = Path(location)
    if folder.is_file():
        folder = folder.parent
    try:
        info = json.loads((folder / AUGMENT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(info, dict) or not isinstance(info.get("group_size", 1), int) or info.get("group_size", 1) < 1:
        return {}
    return info


def as_nchw_uint8(x: np.ndarray) -> np.ndarray:
    if is_streamed(x):
        return x
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    return x


# ------------------------------------------------------------------ predict inputs

def read_inputs(paths, input_shape, invert: str = "auto"):
    """Read images / ``.npy`` files into ``(names, pixels_or_inputs, is_pixels)`` chunks.

    Returns a list of ``(name, array, is_uint8_pixels)`` with ``array`` of shape
    ``(N, C, H, W)``. Images are converted to the model's channel count and
    resized to its height and width; ``.npy`` files must already match.
    Pixels stay uint8: the model scales them to [0, 1] exactly as in training.
    """
    if input_shape is None or len(input_shape) != 3:
        raise UserError(f"cannot tell the model's input shape (got {input_shape}); "
                        "predict needs a model whose first layer knows its input_shape")
    c, h, w = input_shape
    chunks = []
    for p in _expand(paths):
        suffix = p.suffix.lower()
        if suffix == ".npy":
            chunks.extend(_read_npy(p, c, h, w))
        elif suffix in IMAGE_SUFFIXES:
            chunks.append((str(p), _read_image(p, c, h, w, invert)[None], True))
        else:
            raise UserError(f"unsupported input {p}: use an image ({', '.join(IMAGE_SUFFIXES[:3])}, ...) "
                            "or a .npy array")
    return chunks


def _expand(paths) -> list[Path]:
    """Files as given; a folder stands for its images and .npy files (sorted, not recursive)."""
    out = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"input file not found: {p}")
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
            if not found:
                raise UserError(f"no images or .npy files in folder {p}")
            out.extend(found)
        else:
            out.append(p)
    return out


def _read_image(p: Path, c: int, h: int, w: int, invert: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            if c == 1:
                im = im.convert("L")
            elif c == 3:
                im = im.convert("RGB")
            else:
                raise UserError(f"the model takes {c}-channel inputs; images can feed 1- or 3-channel "
                                "models only (pass a .npy array instead)")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise UserError(f"cannot read image {p}: not a valid image file") from exc
    except OSError as exc:
        raise UserError(f"cannot read image {p}: {' '.join(str(exc).split())}") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if invert == "yes" or (invert == "auto" and c == 1 and _light_background(arr[0])):
        if invert == "auto":
            notice(f"Notice: {p.name} has a light background; inverted it to light-on-dark like "
                   "the training data (use --invert no to keep it)")
        arr = 255 - arr
    return np.ascontiguousarray(arr)


def _light_background(plane: np.ndarray) -> bool:
    """MNIST-style data is light strokes on a dark background; photos and scans are the opposite."""
    border = np.concatenate([plane[0], plane[-1], plane[:, 0], plane[:, -1]])
    return float(border.mean()) > 127.5


def _read_npy(p: Path, c: int, h: int, w: int):
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"cannot read {p}: {' '.join(str(exc).split())}") from exc
    except OSError as exc:
        raise UserError(f"cannot read {p}: not a valid .npy file ({exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "uif":
        raise UserError(f"{p}: expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    want = (c, h, w)
    shape = arr.shape
    if shape == want:
        arr = arr[None]
    elif c == 1 and shape == (h, w):
        arr = arr[None, None]
    elif arr.ndim == 4 and shape[1:] == want:
        pass
    elif c == 1 and arr.ndim == 3 and shape[1:] == (h, w):
        arr = arr[:, None]
    else:
        raise UserError(f"{p} has shape {shape} but the model expects {want} per sample "
                        f"(or a batch (N, {c}, {h}, {w}))")
    is_pixels = arr.dtype.kind in "ui"  # integers are pixels 0..255, floats are model inputs
    if is_pixels:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{p}: integer arrays are read as 0..255 pixels, but values range "
                            f"{arr.min()}..{arr.max()} (save float inputs instead)")
        arr = arr.astype(np.uint8)
    else:
        if not np.all(np.isfinite(arr)):
            raise UserError(f"{p} contains NaN or infinite values")
        arr = arr.astype(np.float32, copy=False)
    if arr.shape[0] == 1:
        return [(str(p), arr, is_pixels)]
    return [(f"{p}[{i}]", arr[i:i + 1], is_pixels) for i in range(arr.shape[0])]
