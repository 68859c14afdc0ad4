"""Model files: one zip holding a JSON description and ``.npy`` arrays; no pickle anywhere.

Layout (readable with any zip tool)::

    nbcnn_model.json      format/version, model config (layers), weight index,
                          compile settings, optimiser config + scalar state,
                          training position and dropout RNG state, user metadata
    weights/0000.npy ...  the layer weights, in model order
    optimizer/<slot>.npy  flat optimiser state (momentum, Adam moments)

Writes are atomic (temp file in the same folder, fsync, ``os.replace``), so a
crash never leaves a half-written model under the final name. Reading checks
the zip CRCs, the JSON, every array's shape and dtype against the index, and
loads arrays with ``allow_pickle=False``; any problem is a
:class:`ModelFileError` that names the file.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from ._atomic import atomic_open

__all__ = ["save_model", "load_model", "ModelFileError", "FORMAT", "VERSION", "register_model_class"]

FORMAT = "nbcnn-model"
VERSION = 1
_INDEX = "nbcnn_model.json"


class ModelFileError(ValueError):
    """A model file is missing, corrupt, truncated, or not an nbcnn model."""


# Model classes register how to build themselves from a config (nbcnn.models does, on import), so
# this module, below the models in the layering, never imports them.
_MODEL_CLASSES: dict = {}


def register_model_class(name: str, from_config) -> None:
    """Let :func:`load_model` build models whose config says ``"class_name": name``."""
    _MODEL_CLASSES[name] = from_config


def _build_model(cfg: dict, device):
    if not _MODEL_CLASSES:
        raise RuntimeError("no model classes are registered: load models with nbcnn.load_model")
    if not isinstance(cfg, dict):
        raise TypeError("the model description is not an object")
    kind = cfg.get("class_name", "Sequential")  # files without a class name hold a Sequential
    if kind not in _MODEL_CLASSES:
        raise ValueError(f"unknown model class {kind!r}")
    return _MODEL_CLASSES[kind](cfg, device=device)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def save_model(model, path, metadata: dict | None = None, include_optimizer: bool = True) -> None:
    """Write ``model`` to ``path`` (see the module docstring)."""
    path = os.fspath(path)
    model.build()
    if metadata is None:
        metadata = getattr(model, "metadata", None) or None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    index: dict = {"format": FORMAT, "version": VERSION, "model": model.get_config(), "weights": [],
                   "metadata": metadata or {}}
    from . import __version__

    index["nbcnn_version"] = __version__
    arrays: list[tuple[str, np.ndarray]] = []
    k = 0
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            name = f"weights/{k:04d}.npy"
            index["weights"].append({"layer": layer.name, "index": i, "file": name,
                                     "shape": list(w.shape), "dtype": w.dtype.str})
            arrays.append((name, w))
            k += 1
    if model.loss is not None and model.optimizer is not None:
        index["compile"] = {"loss": model.loss.get_config(), "metrics": list(model.metrics),
                            "optimizer": model.optimizer.get_config()}
        if include_optimizer:
            scalars, slots = model.optimizer.get_state()
            index["optimizer_state"] = {"scalars": scalars, "arrays": {}}
            for slot, arr in slots.items():
                name = f"optimizer/{slot}.npy"
                index["optimizer_state"]["arrays"][slot] = {"file": name, "shape": list(arr.shape),
                                                            "dtype": arr.dtype.str}
                arrays.append((name, arr))
    index["training"] = {
        "progress": {k2: (float(v) if isinstance(v, float) else int(v)) for k2, v in model.progress.items()},
        "dropout_rng": model._dropout_rng.bit_generator.state,
        "layer_rngs": {l.name: l.rng.bit_generator.state for l in model.layers
                       if getattr(l, "rng", None) is not None and l.rng is not model._dropout_rng},
    }
    with atomic_open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(_INDEX, json.dumps(index, indent=1))
            for name, arr in arrays:
                zf.writestr(name, _npy_bytes(arr))


def _read_array(zf, entry: dict, path: str) -> np.ndarray:
    try:  # the member's declared size must be the index's shape x dtype (+ an .npy header) before reading
        info = zf.getinfo(entry["file"])
        nbytes = int(np.prod(entry["shape"], dtype=object)) * np.dtype(entry["dtype"]).itemsize
    except KeyError:
        raise ModelFileError(f"{path}: missing array {entry.get('file')!r} (truncated or edited file)") from None
    if not nbytes <= info.file_size <= nbytes + 65536 + 16:
        raise ModelFileError(f"{path}: array {entry['file']!r} holds {info.file_size:,} bytes, but the index "
                             f"says {entry['dtype']}{tuple(entry['shape'])} ({nbytes:,} bytes)")
    try:
        data = zf.read(entry["file"])  # checks the CRC
        arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except KeyError:
        raise ModelFileError(f"{path}: missing array {entry.get('file')!r} (truncated or edited file)") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelFileError(f"{path}: corrupt array {entry.get('file')!r}: {exc}") from None
    if list(arr.shape) != list(entry["shape"]) or arr.dtype.str != entry["dtype"]:
        raise ModelFileError(f"{path}: array {entry['file']!r} has {arr.dtype.str}{arr.shape}, the index "
                             f"says {entry['dtype']}{tuple(entry['shape'])}")
    return arr


def read_index(path) -> dict:
    """The JSON index of a model file (cheap: reads no weights)."""
    path = os.fspath(path)
    with _open(path) as zf:
        return _index(zf, path)


def _open(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such model file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory, not a model file")
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(f"{path}: not a valid nbcnn model file (corrupt or truncated zip: {exc})") from None


_MAX_INDEX_BYTES = 64 << 20  # a real index is kilobytes; a larger one is an edited or hostile file


def _index(zf, path: str) -> dict:
    """The validated JSON index. Its declared size is checked before anything is decompressed, and the
    read is bounded, so a small file whose index would inflate to gigabytes is rejected at once."""
    try:
        info = zf.getinfo(_INDEX)
    except KeyError:
        raise ModelFileError(f"{path}: not an nbcnn model file (no {_INDEX} inside)") from None
    if info.file_size > _MAX_INDEX_BYTES:
        raise ModelFileError(f"{path}: the model index declares {info.file_size:,} bytes, more than the "
                             f"{_MAX_INDEX_BYTES:,} an nbcnn index may have (not a file nbcnn wrote)")
    try:
        with zf.open(info) as f:
            raw = f.read(_MAX_INDEX_BYTES + 1)
        if len(raw) > _MAX_INDEX_BYTES:
            raise ModelFileError(f"{path}: the model index is larger than {_MAX_INDEX_BYTES:,} bytes")
        index = json.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path}: corrupt model index: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an nbcnn model file (format {index.get('format')!r})"
                             if isinstance(index, dict) else f"{path}: corrupt model index")
    _validate(index, path)
    if index.get("version", 0) > VERSION:
        raise ModelFileError(f"{path}: written by a newer nbcnn (format version {index['version']}, "
                             f"this one reads <= {VERSION})")
    return index


def _fail(path, field, why):
    raise ModelFileError(f"{path}: invalid model index field {field}: {why}")


def _validate(index: dict, path: str) -> None:
    """Check the index's types and shapes (a schema), naming the first bad field."""
    v = index.get("version", 0)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        _fail(path, "version", f"expected a non-negative integer, got {v!r}")
    model = index.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("layers"), list):
        _fail(path, "model.layers", "expected a list of layer configs")
    for i, lc in enumerate(model["layers"]):
        if not isinstance(lc, dict) or not isinstance(lc.get("class_name"), str) \
                or not isinstance(lc.get("config", {}), dict):
            _fail(path, f"model.layers[{i}]", "expected {\"class_name\": str, \"config\": {...}}")
    weights = index.get("weights", [])
    if not isinstance(weights, list):
        _fail(path, "weights", f"expected a list of array entries, got {type(weights).__name__}")
    for i, e in enumerate(weights):
        _check_entry(e, f"weights[{i}]", path)
    if "metadata" in index and not isinstance(index["metadata"], dict):
        _fail(path, "metadata", "expected an object")
    comp = index.get("compile")
    if comp is not None:
        if not isinstance(comp, dict) or not isinstance(comp.get("loss"), (str, dict)) \
                or not isinstance(comp.get("metrics", []), list) or not isinstance(comp.get("optimizer"), (str, dict)):
            _fail(path, "compile", "expected {\"loss\", \"metrics\": [...], \"optimizer\"}")
    st = index.get("optimizer_state")
    if st is not None:
        if not isinstance(st, dict):
            _fail(path, "optimizer_state", "expected an object")
        sc = st.get("scalars", {})
        if not isinstance(sc, dict) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                               for x in sc.values()):
            _fail(path, "optimizer_state.scalars", f"expected an object of numbers, got {str(sc)[:80]!r}")
        arrays = st.get("arrays", {})
        if not isinstance(arrays, dict):
            _fail(path, "optimizer_state.arrays", "expected an object of array entries")
        for slot, e in arrays.items():
            _check_entry(e, f"optimizer_state.arrays.{slot}", path)
    tr = index.get("training", {})
    if not isinstance(tr, dict):
        _fail(path, "training", "expected an object")
    prog = tr.get("progress") or {}
    if not isinstance(prog, dict):
        _fail(path, "training.progress", "expected an object")
    for key, x in prog.items():
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
        if key in ("epoch", "batch", "correct", "seen"):
            ok = ok and isinstance(x, int)
        if not ok:
            _fail(path, f"progress.{key}", f"expected a non-negative {'integer' if key != 'loss_sum' else 'number'}, "
                                           f"got {x!r}")


def _check_entry(e, field: str, path: str) -> None:
    if not isinstance(e, dict):
        _fail(path, field, f"expected {{\"file\", \"shape\", \"dtype\"}}, got {type(e).__name__}")
    for key, kind in (("file", str), ("shape", list), ("dtype", str)):
        if not isinstance(e.get(key), kind):
            _fail(path, f"{field}.{key}", "missing" if key not in e else f"expected a {kind.__name__}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"]):
        _fail(path, f"{field}.shape", f"expected non-negative integers, got {e['shape']!r}")
    try:
        dt = np.dtype(e["dtype"])
    except TypeError:
        _fail(path, f"{field}.dtype", f"not a dtype: {e['dtype']!r}")
    if dt.kind not in "fiub":
        _fail(path, f"{field}.dtype", f"expected a numeric dtype, got {e['dtype']!r}")


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_model_size(model, path: str) -> None:
    """Reject a layer config whose weights would not fit in memory, before anything is allocated."""
    if model.input_shape is None:
        return
    try:
        model._configure()
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid model description: {exc}") from None
    itemsize = np.dtype(model.dtype).itemsize
    need = 0
    for layer in model.layers:
        n = sum(int(np.prod(s, dtype=object)) for s in layer._param_shapes)
        need += n * itemsize
        avail = _available_bytes()
        if avail is not None and need > avail:
            raise ModelFileError(f"{path}: layer {layer.name!r} ({type(layer).__name__}) brings the weights to "
                                 f"{need / 2**30:,.1f} GiB, more than the {avail / 2**30:,.1f} GiB of memory "
                                 f"available (an edited layer config?)")


def load_model(path, device="auto", compile: bool = True):
    """Read a model written by ``model.save(path)``; it predicts bit-identically on the same device.

    ``model.metadata`` holds the user metadata given to ``save``; with ``compile`` the loss and
    optimiser (with its state) are restored, so ``fit`` continues where the saved run stopped.
    """
    path = os.fspath(path)
    with _open(path) as zf:
        index = _index(zf, path)
        try:
            model = _build_model(index["model"], device)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFileError(f"{path}: invalid model description: {exc}") from None
        _check_model_size(model, path)
        weights = [_read_array(zf, e, path) for e in index.get("weights", [])]
        try:
            model.set_weights(weights)
        except ValueError as exc:
            raise ModelFileError(f"{path}: weights do not fit the model: {exc}") from None
        comp = index.get("compile")
        if compile and comp:
            from . import optim

            model.compile(loss=comp["loss"], optimizer=optim.get(comp["optimizer"]), metrics=comp["metrics"])
            st = index.get("optimizer_state")
            if st:
                arrays = {slot: _read_array(zf, e, path) for slot, e in st["arrays"].items()}
                for slot, arr in arrays.items():
                    if arr.shape != (model._flat.size,):
                        raise ModelFileError(f"{path}: optimizer slot {slot!r} has shape {arr.shape}, "
                                             f"expected ({model._flat.size},)")
                model.optimizer.set_state(st["scalars"], arrays, xp=model.xp)
        tr = index.get("training") or {}
        if tr.get("progress"):
            model.progress = dict(tr["progress"])
        try:
            if tr.get("dropout_rng"):
                model._dropout_rng.bit_generator.state = tr["dropout_rng"]
            for name, state in (tr.get("layer_rngs") or {}).items():
                layer = model.get_layer(name)
                layer.rng = np.random.default_rng()
                layer.rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{path}: invalid random-generator state: {exc}") from None
        model.metadata = dict(index.get("metadata") or {})
    return model
