"""The execution engine: one executor for every model, sequential or graph.

A :class:`Graph` is a list of *steps* (one call of one layer each) in a
topological order computed once, at build. Tensors are numbered: the model
inputs first, then the output of each step. The executor:

* **forward** runs the steps in order; a value is dropped from the engine as
  soon as its last consumer has run (layers keep in their caches what their
  backward needs, and free it there, so an activation lives until its last
  consumer's backward);
* **backward** walks the *live* steps (those with trainable weights at or
  upstream of them) in reverse and **accumulates** the gradient of a tensor
  used by several steps (fan-out) in an engine-owned buffer reused across
  steps; the order of the sums is fixed, so results are deterministic;
* a layer called more than once (shared weights) keeps one cache and one
  scratch context per call (swapped in around its forward and backward), and
  its weight gradients are the sum over its calls.

Layers before the first live step run in inference mode (their outputs need no
backward), except Dropout. Which steps are live is recomputed only when a
``trainable`` flag changes (:meth:`Graph.plan`).
"""
from __future__ import annotations

from . import layers as L
from . import ops

__all__ = ["Graph", "GraphError"]


class GraphError(ValueError):
    """A graph that cannot be built (disconnected tensor, cycle, duplicate layer name, ...)."""


def _label(layer) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


class Graph:
    """Steps ``(layer, input tensor ids, output tensor id, takes_list)``; see the module docstring.

    ``n_inputs`` tensors 0..n_inputs-1 are the model inputs; step ``i`` writes tensor
    ``n_inputs + i``; ``outputs`` are tensor ids.
    """

    def __init__(self, n_inputs: int, steps, outputs):
        self.n_inputs = int(n_inputs)
        self.steps = []
        for i, (layer, ins, multi) in enumerate(steps):
            ins = tuple(int(t) for t in ins)
            if any(t >= self.n_inputs + i or t < 0 for t in ins):
                raise GraphError(f"{_label(layer)} reads a tensor computed after it: the graph has a cycle")
            self.steps.append((layer, ins, self.n_inputs + i, bool(multi)))
        self.n_tensors = self.n_inputs + len(self.steps)
        self.outputs = [int(t) for t in outputs]
        self.layers: list = []
        seen = set()
        calls: dict = {}
        for layer, *_ in self.steps:
            if id(layer) not in seen:
                seen.add(id(layer))
                self.layers.append(layer)
            calls[id(layer)] = calls.get(id(layer), 0) + 1
        # per-call slots of shared layers (cache + scratch context)
        self.slots = []
        n_slots = 0
        for layer, *_ in self.steps:
            if calls[id(layer)] > 1:
                self.slots.append(n_slots)
                n_slots += 1
            else:
                self.slots.append(-1)
        self._caches = [None] * n_slots
        self._ctxs = [{} for _ in range(n_slots)]
        last = [-1] * self.n_tensors
        for i, (_, ins, _, _) in enumerate(self.steps):
            for t in ins:
                last[t] = i
        keep = set(self.outputs)
        self.free_after = [tuple(t for t in set(ins) if last[t] == i and t not in keep)
                           for i, (_, ins, _, _) in enumerate(self.steps)]
        self.consumers = [[] for _ in range(self.n_tensors)]
        for i, (_, ins, _, _) in enumerate(self.steps):
            for t in ins:
                self.consumers[t].append(i)
        self._key = None
        self._fwd_eval = self._run_list([False] * len(self.steps))
        self._fwd_train = None  # made by plan()
        self._accum: dict = {}       # tensor id -> gradient accumulation buffer (fan-out), reused
        self._scratch: dict = {}     # step -> weight-gradient scratch of a shared layer's extra call

    # ------------------------------------------------------------------------------------------
    def producer(self, t: int):
        """The step index that computes tensor ``t`` (None for a model input)."""
        return None if t < self.n_inputs else t - self.n_inputs

    def step_of_layer(self, layer) -> int:
        """The last step that calls ``layer``."""
        for i in range(len(self.steps) - 1, -1, -1):
            if self.steps[i][0] is layer:
                return i
        raise GraphError(f"{_label(layer)} is not part of this graph")

    def _run_list(self, modes) -> list:
        return [(layer, ins[0] if ins else -1, ins, out, multi, self.slots[i], modes[i], self.free_after[i])
                for i, (layer, ins, out, multi) in enumerate(self.steps)]

    def plan(self, key=None) -> None:
        """Recompute live steps, training modes, ``need_gx`` and gradient writers when ``trainable`` flags change."""
        if key is None:
            key = tuple(bool(l.trainable) for l in self.layers)
        if key == self._key:
            return
        n = len(self.steps)
        live = [False] * n
        for i, (layer, ins, _, _) in enumerate(self.steps):
            own = bool(layer.trainable and layer._param_shapes)
            up = any(t >= self.n_inputs and live[t - self.n_inputs] for t in ins)
            live[i] = own or up
        self.live = live
        self.modes = [live[i] or isinstance(self.steps[i][0], L.Dropout) for i in range(n)]
        # need[t]: the gradient of tensor t is wanted (it comes from a live step)
        self.need = [t >= self.n_inputs and live[t - self.n_inputs] for t in range(self.n_tensors)]
        writers = set()
        index = {id(l): k for k, l in enumerate(self.layers)}
        first_step = {}
        for i, (layer, *_) in enumerate(self.steps):
            first_step.setdefault(id(layer), i)
        back = []
        for i in range(n - 1, -1, -1):
            if not live[i]:
                continue
            layer, ins, out, multi = self.steps[i]
            first_call = id(layer) not in writers  # the last call in forward order writes, others add
            writers.add(id(layer))
            ng = any(self.need[t] for t in ins)
            done = index[id(layer)] if first_step[id(layer)] == i else -1  # all its calls are done here
            plain = self.slots[i] < 0 and not multi
            if plain:
                layer.need_gx = ng  # a shared layer gets it at each call instead
            back.append((plain, i, layer, ins[0] if ins else -1, out, ng, done,
                         (ins, multi, self.slots[i], first_call)))
        self.back = back
        self.first_live = next((i for i in range(n) if live[i]), n)
        # in training nothing is dropped during the forward pass: the layers' caches hold what the
        # backward needs, and the engine's list of values is released when the forward returns
        self._fwd_train = [(*st[:-1], ()) for st in self._run_list(self.modes)]
        self._key = key

    # ------------------------------------------------------------------------------------------
    def forward(self, xs, training: bool, stop: int | None = None, linear_last: bool = False, keep=(),
                start: int = 0):
        """Run steps ``[start, stop)`` on the input arrays ``xs``; returns the list of tensor values
        (None where freed). ``linear_last``: the last step run is a Dense whose softmax is left
        to the loss (fused softmax + cross-entropy). ``keep``: tensor ids not to free. With
        ``start > 0``, ``xs`` is the one input of step ``start`` (a linear stack)."""
        vals = [None] * self.n_tensors
        run = self._fwd_train if training else self._fwd_eval
        n = len(run) if stop is None else stop
        if start:
            vals[self.steps[start][1][0]] = xs[0]
        else:
            vals[:self.n_inputs] = xs
        if start or n != len(run):
            run = run[start:n]
        if linear_last:
            run, tail = run[:-1], run[-1]
        for layer, in0, ins, out, multi, s, tr, free in run:
            if s >= 0:
                vals[out] = self._forward_shared(layer, s, ins, vals, multi, tr)
            elif multi:
                vals[out] = layer.forward(tuple([vals[t] for t in ins]), training=tr)
            else:
                vals[out] = layer.forward(vals[in0], training=tr)
            if free:
                for t in free:
                    if t not in keep:
                        vals[t] = None
        if linear_last:
            layer, in0, ins, out, multi, s, tr, free = tail
            act, layer.activation = layer.activation, "linear"
            try:
                vals[out] = (self._forward_shared(layer, s, ins, vals, multi, tr) if s >= 0 else
                             layer.forward(tuple([vals[t] for t in ins]) if multi else vals[in0], training=tr))
            finally:
                layer.activation = act
        return vals

    def _forward_shared(self, layer, s, ins, vals, multi, tr):
        """One call of a layer called several times: its own scratch context, its cache kept aside."""
        if hasattr(layer, "_ctx"):
            layer._ctx = self._ctxs[s]
        y = layer.forward(tuple([vals[t] for t in ins]) if multi else vals[ins[0]], training=tr)
        self._caches[s] = tuple(getattr(layer, a, None) for a in layer.call_state)
        return y

    def backward(self, g, t_out: int, linear_last_step: int = -1, hook=None) -> None:
        """Back-propagate ``g`` (the gradient of tensor ``t_out``) through the live steps, writing
        the weight gradients into the layers' ``grads`` (views of the model's flat buffer).

        ``hook.layer_done(j)`` (distributed training) is called once the weight gradients of
        ``layers[j]`` and of every later layer are final, so their buckets can be reduced
        while the backward pass goes on."""
        grads = [None] * self.n_tensors
        owned = [False] * self.n_tensors
        grads[t_out] = g
        for plain, i, layer, in0, out, ng, done, rest in self.back:
            gy = grads[out]
            if gy is None and plain:  # not run (a softmax left to the loss) or not reaching the loss
                continue
            grads[out] = None
            if not plain:
                self._backward_general(i, layer, gy, rest, ng, grads, owned, linear_last_step)
            else:
                if i != linear_last_step:
                    gx = layer.backward(gy)
                else:
                    act, layer.activation = layer.activation, "linear"
                    try:
                        gx = layer.backward(gy)
                    finally:
                        layer.activation = act
                if ng:
                    if grads[in0] is None:
                        grads[in0] = gx
                    else:
                        self._accumulate(grads, owned, in0, gx)
            if done >= 0 and hook is not None:
                hook.layer_done(done)

    def _backward_general(self, i, layer, gy, rest, ng, grads, owned, linear_last_step):
        """Backward of a step that takes a list, or of one call of a shared layer."""
        ins, multi, s, first = rest
        if s >= 0:
            for a, v in zip(layer.call_state, self._caches[s]):
                setattr(layer, a, v)
            self._caches[s] = None
            if hasattr(layer, "_ctx"):
                layer._ctx = self._ctxs[s]
        if gy is None:  # this step's output does not reach the loss
            layer._cache = None
            return
        layer.need_gx = ng
        swap = False if first else bool(layer.trainable and layer.grads)
        if swap:
            real = layer.grads
            layer.grads = self._scratch_for(i, real)
        if i == linear_last_step:
            act, layer.activation = layer.activation, "linear"
            try:
                gx = layer.backward(gy)
            finally:
                layer.activation = act
        else:
            gx = layer.backward(gy)
        if swap:
            for r, sc in zip(real, layer.grads):
                ops.ew(r, sc, "add", out=r)
            layer.grads = real
        if not ng:
            return
        if multi:
            need = self.need
            for t, gt in zip(ins, gx):
                if need[t]:
                    self._accumulate(grads, owned, t, gt)
        else:
            self._accumulate(grads, owned, ins[0], gx)

    def _accumulate(self, grads, owned, t, g):
        cur = grads[t]
        if cur is None:
            grads[t] = g
            return
        if owned[t]:
            ops.ew(cur, g, "add", out=cur)
            return
        buf = self._accum.get(t)
        if buf is None or buf.shape != cur.shape or buf.dtype != cur.dtype or type(buf) is not type(cur):
            buf = self._accum[t] = ops.array_module(cur).empty(cur.shape, dtype=cur.dtype)
        ops.ew(cur, g, "add", out=buf)
        grads[t] = buf
        owned[t] = True

    def _scratch_for(self, i, real):
        sc = self._scratch.get(i)
        if sc is None or len(sc) != len(real) or any(a.shape != b.shape or type(a) is not type(b)
                                                     for a, b in zip(sc, real)):
            sc = self._scratch[i] = [ops.array_module(r).zeros_like(r) for r in real]
        return sc

    def reset_calls(self) -> None:
        """Forget per-call caches and contexts (after moving the model to another device)."""
        self._caches = [None] * len(self._caches)
        self._ctxs = [{} for _ in self._ctxs]
        self._accum.clear()
        self._scratch.clear()
