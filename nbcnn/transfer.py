"""Transfer learning: new head, frozen layers, and features cached on disk.

The recipe (course notes): take a network trained on many classes, replace
its last classification layer by one for k classes, freeze the other layers
and train only the new head. Computational trick: the frozen layers compute
the same features every epoch, so compute them ONCE, keep them on disk, and
train the head on the cached features. With more data, freeze fewer layers
(:func:`train_last`); the cache then holds the output of the frozen prefix.

Cache files (:class:`FeatureCache`) are ``.npy`` arrays opened memory-mapped,
named by layer and data, with a JSON sidecar holding the key: a SHA-256 over
the frozen layers' configs and weights, the layer and the data. A sidecar
whose key differs means the cache is **stale** (the base model changed); a
missing, truncated or altered array (checksum) means **corrupt**; both are
rebuilt. Both files are written atomically (temp file + ``os.replace``), the
sidecar last, so a crash never leaves a half-written entry that looks valid.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ._atomic import atomic_path, write_json

__all__ = [
    "layer_index", "extract_features", "replace_head", "freeze", "unfreeze", "train_last",
    "frozen_prefix", "FeatureCache", "fit_head", "as_model_input", "weights_digest", "data_digest",
]


# ---------------------------------------------------------------- layers

def _layers(model):
    layers = getattr(model, "layers", model)
    try:
        return list(layers)
    except TypeError:
        raise TypeError(f"expected a model with .layers or a list of layers, got {type(model).__name__}") from None


def layer_index(model, layer) -> int:
    """Index of ``layer`` (an index, negative allowed, a name, or the layer object) in the model."""
    layers = _layers(model)
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        i = int(layer)
        if not -len(layers) <= i < len(layers):
            raise ValueError(f"layer index {i} out of range: the model has {len(layers)} layers")
        return i % len(layers)
    if isinstance(layer, str):
        s = layer.strip()
        if s.lstrip("-").isdigit():
            return layer_index(model, int(s))
        for i, l in enumerate(layers):
            if getattr(l, "name", None) == s:
                return i
        names = ", ".join(str(getattr(l, "name", "?")) for l in layers)
        raise ValueError(f"no layer named {layer!r}; layers: {names}")
    for i, l in enumerate(layers):
        if l is layer:
            return i
    raise TypeError(f"layer must be an index, a name or a layer of the model, got {layer!r}")


def _has_params(layer) -> bool:
    return bool(getattr(layer, "param_names", ())) or bool(getattr(layer, "params", []))


def _set_trainable(model, upto, flag: bool) -> int:
    layers = _layers(model)
    last = len(layers) - 1 if upto is None else layer_index(model, upto)
    for l in layers[:last + 1]:
        l.trainable = flag
    return last


def freeze(model, upto=None):
    """Make layers ``0..upto`` (inclusive; all when None) non-trainable. Returns the index."""
    return _set_trainable(model, upto, False)


def unfreeze(model, upto=None):
    """Make layers ``0..upto`` (inclusive; all when None) trainable again. Returns the index."""
    return _set_trainable(model, upto, True)


def train_last(model, n=1):
    """Train only the last ``n`` layers that have weights; freeze all the others.

    Returns the index of the first layer that stays trainable.
    """
    layers = _layers(model)
    weighted = [i for i, l in enumerate(layers) if _has_params(l)]
    n = int(n)
    if n < 1:
        raise ValueError(f"train_last needs n >= 1, got {n}")
    if n > len(weighted):
        raise ValueError(f"train_last({n}): the model has only {len(weighted)} layers with weights")
    first = weighted[-n]
    for i, l in enumerate(layers):
        l.trainable = i >= first
    return first


def frozen_prefix(model) -> int:
    """Number of leading layers that can be precomputed: all layers before the first
    one that has trainable weights. Their output is what :class:`FeatureCache` stores."""
    for i, l in enumerate(_layers(model)):
        if _has_params(l) and l.trainable:
            return i
    return len(_layers(model))


def _clone_layer(layer):
    """An independent copy of a built layer (config + weights + trainable flag)."""
    from . import layers as L
    c = L.deserialize(L.serialize(layer))
    if layer.input_shape is not None:
        dtype = layer.params[0].dtype if getattr(layer, "params", None) else np.float32
        c.build(tuple(layer.input_shape), dtype=dtype)
        if _has_params(layer):
            c.set_weights(layer.get_weights())
    c.trainable = layer.trainable
    return c


def replace_head(model, num_classes, *, seed=None, name=None):
    """A new model: ``model`` with its last weighted layer (the classifier) replaced by a
    fresh ``Dense(num_classes)`` of the same activation.

    The other layers are copies (same weights and ``trainable`` flags), so the base
    model stays usable and unchanged. Compile the result before training it.
    """
    from . import layers as L
    from .models import Sequential

    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if _is_graph(model):
        return _replace_graph_head(model, num_classes, seed=seed, name=name)
    layers = _layers(model)
    idx = [i for i, l in enumerate(layers) if _has_params(l)]
    if not idx or not isinstance(layers[idx[-1]], L.Dense):
        raise ValueError("replace_head needs a model whose last layer with weights is Dense")
    i = idx[-1]
    old = layers[i]
    if old.input_shape is None:
        raise ValueError("replace_head: the model is not built yet (its input shape is unknown)")
    taken = {l.name for l in layers}
    new_name = name or next(n for n in (f"{old.name}_new", *(f"{old.name}_new{k}" for k in range(2, 99)))
                            if n not in taken)
    head = L.Dense(num_classes, activation=old.activation, use_bias=old.use_bias, name=new_name)
    dtype = np.dtype(getattr(model, "dtype", np.float32))
    from .random import default_rng
    head.build(tuple(old.input_shape), dtype=dtype, rng=default_rng(seed))
    new_layers = [_clone_layer(l) for l in layers[:i]] + [head] + [_clone_layer(l) for l in layers[i + 1:]]
    kw = {"name": getattr(model, "name", None) or "transfer", "dtype": dtype}
    if getattr(model, "device", None) is not None:
        kw["device"] = model.device
    if seed is not None:
        kw["seed"] = int(seed)
    try:
        m = Sequential(new_layers, **kw)
    except (TypeError, ValueError):
        m = Sequential(new_layers)
    if getattr(model, "input_shape", None) is not None:
        m.build(tuple(model.input_shape))
    return m


def _is_graph(model) -> bool:
    """A functional Model (not a Sequential, not a plain list of layers)."""
    from .models import Model, Sequential

    return isinstance(model, Model) and not isinstance(model, Sequential)


def _replace_graph_head(model, num_classes, *, seed=None, name=None):
    """replace_head for a graph: the same graph (rebuilt from its config) with the last weighted
    layer, a Dense, swapped for a fresh one; other weights and ``trainable`` flags copied."""
    from . import layers as L
    from .models import Model
    from .random import default_rng

    model.build()  # the weights to copy must exist (drawn from the model's seed)
    layers = _layers(model)
    weighted = [l for l in layers if _has_params(l)]
    if not weighted or not isinstance(weighted[-1], L.Dense):
        raise ValueError("replace_head needs a model whose last layer with weights is Dense")
    old = weighted[-1]
    taken = {l.name for l in layers}
    new_name = name or next(n for n in (f"{old.name}_new", *(f"{old.name}_new{k}" for k in range(2, 99)))
                            if n not in taken)
    cfg = model.get_config()
    head = L.Dense(num_classes, activation=old.activation, use_bias=old.use_bias, name=new_name)
    cfg["layers"] = [L.serialize(head) if lc["config"].get("name") == old.name else lc for lc in cfg["layers"]]
    cfg["nodes"] = [[new_name if n == old.name else n, ins] for n, ins in cfg["nodes"]]
    if seed is not None:
        cfg["seed"] = int(seed)
    m = Model.from_config(cfg, device=model.device)
    m.build()
    for l in m.layers:
        if l.name == new_name:
            l._init_into(l.params, default_rng(seed))
            continue
        src = model.get_layer(l.name)
        if _has_params(src) or src.state_names:
            l.set_weights(src.get_weights())
        l.trainable = src.trainable
    return m


def _head_model(model, start, feat_shape, **kw):
    """The part of graph ``model`` from layer ``start`` on, as a Model whose one input is the
    tensor it reads from the frozen part (its features)."""
    from .models import Input, Model

    g = model._graph
    layers = _layers(model)
    first = min(i for i, st in enumerate(g.steps) if st[0] is layers[start])
    before = {id(st[0]) for st in g.steps[:first]}
    outside = sorted({t for st in g.steps[first:] for t in st[1] if t < g.n_inputs + first})
    for st in g.steps[first:]:
        if id(st[0]) in before:
            raise ValueError(f"layer {st[0].name!r} is used on both sides of the cut at layer "
                             f"{layers[start].name!r}: cannot train it on cached features")
    if len(outside) != 1:
        raise ValueError(f"the layers from {layers[start].name!r} on read {len(outside)} tensors of the "
                         "frozen part; features can stand in for exactly one")
    inp = Input(tuple(feat_shape), name="features")
    tensors = {outside[0]: inp}
    for layer, ins, out, multi in g.steps[first:]:
        args = [tensors[t] for t in ins]
        tensors[out] = layer(args if multi else args[0])
    outs = [tensors[t] for t in g.outputs]
    return Model(inp, outs[0] if len(outs) == 1 else outs, **kw)


# ---------------------------------------------------------------- features

def as_model_input(x, dtype=np.float32):
    """uint8 images -> float in [0, 1] (the scaling nbcnn's datasets and loaders use)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(dtype) * dtype(1.0 / 255.0) if dtype is np.float32 else x.astype(dtype) / 255.0
    if x.dtype.kind != "f":
        raise TypeError(f"x must be uint8 images or floats, got {x.dtype}")
    return x


def _model_dtype(layers):
    for l in layers:
        if getattr(l, "params", None):
            return np.dtype(l.params[0].dtype).type
    return np.float32


def _iter_features(model, upto, x, batch_size):
    """(start, features of layers 0..upto) per batch, in inference mode, as NumPy arrays."""
    from .device import to_numpy
    layers = _layers(model)[:upto + 1]
    is_model = hasattr(model, "forward") and hasattr(model, "_to_batch")
    graph = is_model and _is_graph(model)
    dtype = np.dtype(getattr(model, "dtype", None) or _model_dtype(layers)).type
    for s in range(0, x.shape[0], batch_size):
        if graph:  # the output of that layer's (last) call
            name = layers[upto].name
            f = model.tensor_values(model._to_batch(x[s:s + batch_size]), [name])[name]
        elif is_model:  # the model's device and dtype (a GPU model gets CuPy batches)
            f = model.forward(model._to_batch(x[s:s + batch_size]), training=False, stop=upto + 1)
        else:
            f = np.ascontiguousarray(as_model_input(x[s:s + batch_size], dtype))
            for l in layers:
                f = l.forward(f, training=False)
        yield s, np.asarray(to_numpy(f))


def extract_features(model, x, layer=-1, *, batch_size=256, progress=None):
    """Activations of ``layer`` (index, name; inclusive) for all of ``x``, in inference
    mode (dropout off), computed in batches. uint8 images are scaled to [0, 1].

    ``progress(n)`` is called with the number of images done after each batch.
    """
    upto = layer_index(model, layer)
    x = np.asarray(x)
    if x.shape[0] == 0:
        raise ValueError("x is empty")
    out = None
    for s, f in _iter_features(model, upto, x, int(batch_size)):
        if out is None:
            out = np.empty((x.shape[0], *f.shape[1:]), dtype=f.dtype)
        out[s:s + f.shape[0]] = f
        if progress is not None:
            progress(f.shape[0])
    return out


def _h_update_array(h, a):
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    flat = a.reshape(-1).view(np.uint8) if a.size else np.empty(0, np.uint8)
    step = 1 << 24
    for s in range(0, flat.size, step):
        h.update(memoryview(flat[s:s + step]))


def weights_digest(model, upto) -> str:
    """SHA-256 of the configs and weights of layers ``0..upto``: what the features depend on."""
    h = hashlib.sha256()
    for l in _layers(model)[:layer_index(model, upto) + 1]:
        cfg = l.get_config() if hasattr(l, "get_config") else {}
        cfg = {k: v for k, v in cfg.items() if k not in ("name", "trainable")}
        h.update(type(l).__name__.encode())
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        for w in (l.get_weights() if _has_params(l) else []):
            _h_update_array(h, w)
    return h.hexdigest()


def data_digest(x) -> str:
    h = hashlib.sha256()
    _h_update_array(h, np.asarray(x))
    return h.hexdigest()


def _unlink(p):
    try:
        os.unlink(p)
    except OSError:
        pass


class FeatureCache:
    """Features of a model's layer for a data set, memory-mapped from ``directory``.

    ``get(model, x, layer)`` returns a read-only memmap and sets ``status`` to
    ``"hit"``, ``"miss"``, ``"stale"`` or ``"corrupt"`` (the last three rebuild).
    """

    FORMAT = 1

    def __init__(self, directory, *, verify=True):
        self.dir = Path(directory).expanduser()
        self.verify = bool(verify)
        self.status = None
        self.last_path = None

    def _paths(self, layer_name, ddigest):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(layer_name))
        stem = f"{safe}-{ddigest[:20]}"
        return self.dir / f"{stem}.npy", self.dir / f"{stem}.json"

    def get(self, model, x, layer=-1, *, batch_size=256, progress=None):
        layers = _layers(model)
        upto = layer_index(model, layer)
        x = np.asarray(x)
        ddig = data_digest(x)
        wdig = weights_digest(model, upto)
        lname = getattr(layers[upto], "name", None) or f"layer{upto}"
        key = hashlib.sha256(f"{self.FORMAT}|{wdig}|{upto}|{lname}|{ddig}".encode()).hexdigest()
        npy, meta = self._paths(lname, ddig)
        self.last_path = npy
        status = self._check(npy, meta, key)
        if status == "hit":
            self.status = "hit"
            return np.load(npy, mmap_mode="r")
        self.status = status
        self.dir.mkdir(parents=True, exist_ok=True)
        self._build(model, upto, x, npy, meta, key, batch_size, progress,
                    {"weights": wdig, "data": ddig, "layer": lname, "index": upto})
        return np.load(npy, mmap_mode="r")

    def _check(self, npy: Path, meta: Path, key: str) -> str:
        if not meta.exists():
            return "miss"
        try:
            info = json.loads(meta.read_text())
            if not isinstance(info, dict) or info.get("format") != self.FORMAT:
                return "corrupt"
        except (OSError, ValueError):
            return "corrupt"
        if info.get("key") != key:
            return "stale"
        try:
            arr = np.load(npy, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return "corrupt"
        if list(arr.shape) != info.get("shape") or arr.dtype.str != info.get("dtype"):
            return "corrupt"
        if self.verify:
            h = hashlib.sha256()
            _h_update_array(h, arr)
            if h.hexdigest() != info.get("sha256"):
                return "corrupt"
        return "hit"

    def _build(self, model, upto, x, npy, meta, key, batch_size, progress, fields):
        _unlink(meta)  # the old entry is invalid from now on, whatever happens next
        t0 = time.perf_counter()
        with atomic_path(npy, ".tmp.npy") as tmp:
            mm = None
            for s, f in _iter_features(model, upto, x, int(batch_size)):
                if mm is None:
                    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=f.dtype,
                                                   shape=(x.shape[0], *f.shape[1:]))
                mm[s:s + f.shape[0]] = f
                if progress is not None:
                    progress(f.shape[0])
            mm.flush()
            h = hashlib.sha256()
            _h_update_array(h, mm)
            shape, dtype = list(mm.shape), mm.dtype.str
            del mm
        info = {"format": self.FORMAT, "key": key, "shape": shape, "dtype": dtype, "sha256": h.hexdigest(),
                "seconds": round(time.perf_counter() - t0, 3), **fields}
        write_json(meta, info, indent=1)


# ---------------------------------------------------------------- training on features

def fit_head(model, features, y, *, start=None, validation_data=None, epochs=10, batch_size=32,
             optimizer="adam", lr=None, loss="cross_entropy", verbose=0, callbacks=None, seed=None):
    """Train layers ``start:`` of ``model`` on precomputed ``features`` (the output of layer
    ``start - 1``); ``start`` defaults to :func:`frozen_prefix`. The layers trained are
    the model's own objects, so ``model`` holds the trained head afterwards.
    ``validation_data`` is ``(features, labels)``. Returns the fit History.
    """
    from .models import Sequential
    layers = _layers(model)
    start = frozen_prefix(model) if start is None else int(start)
    if not 0 < start < len(layers):
        raise ValueError(f"head start {start} must be between 1 and {len(layers) - 1} "
                         f"(nothing to train or nothing frozen)")
    feats = np.asarray(features)
    if feats.shape[0] != np.shape(y)[0]:
        raise ValueError(f"features have {feats.shape[0]} rows but y has {np.shape(y)[0]} labels")
    head_in = layers[start].input_shape
    if head_in is not None and tuple(feats.shape[1:]) != tuple(head_in):
        raise ValueError(f"features of shape {feats.shape[1:]} do not fit layer {layers[start].name!r}, "
                         f"which takes {tuple(head_in)}: cache the output of layer {start - 1}")
    kw = {"dtype": getattr(model, "dtype", "float32"), "name": "head"}
    if seed is not None:
        kw["seed"] = int(seed)
    if getattr(model, "device", None) is not None:
        kw["device"] = model.device
    if _is_graph(model):
        head = _head_model(model, start, feats.shape[1:], **kw)
    else:
        head = Sequential(layers[start:], **kw)
    head.build(tuple(feats.shape[1:]))
    def make_opt():
        if lr is None:
            return optimizer
        from . import optim
        return {"sgd": optim.SGD, "adam": optim.Adam}[str(optimizer).lower()](lr=lr)

    head.compile(loss=loss, optimizer=make_opt(), metrics=["accuracy"])
    try:
        return head.fit(feats, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                        callbacks=callbacks, verbose=verbose)
    finally:
        if hasattr(model, "_flat"):
            # the head's weights now live in its own buffer: the model re-gathers them on next use
            model._flat = None
        if getattr(model, "loss", True) is None and hasattr(model, "compile"):
            model.compile(loss=loss, optimizer=make_opt())  # ready to evaluate, save, fine-tune
