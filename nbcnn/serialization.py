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


def _index(zf, path: str) -> dict:
    try:
        index = json.loads(zf.read(_INDEX).decode("utf-8"))
    except KeyError:
        raise ModelFileError(f"{path}: not an nbcnn model file (no {_INDEX} inside)") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelFileError(f"{path}: corrupt model index: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an nbcnn model file (format {index.get('format')!r})"
                             if isinstance(index, dict) else f"{path}: corrupt model index")
    if int(index.get("version", 0)) > VERSION:
        raise ModelFileError(f"{path}: written by a newer nbcnn (format version {index['version']}, "
                             f"this one reads <= {VERSION})")
    return index


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
