"""Tensor: an array, its gradient, and the graph of ops that made it.

An op computes its result with NumPy and, when any input needs a gradient,
attaches a ``backward(g)`` closure to the result. The closure receives the
gradient of the loss with respect to the result and returns one gradient per
input (``None`` where an input needs none). ``Tensor.backward`` walks the graph
once in reverse topological order and frees it as it goes, so the arrays a
forward pass cached live only until they have been used.

The basic ops live here (arithmetic, reductions, shapes, indexing); the fused
neural-network ops live in :mod:`scratchllm.functional`.
"""
from __future__ import annotations

import contextlib
import threading

from .backend import DEFAULT_DTYPE, to_numpy, xp


class _GradMode(threading.local):
    """Grad mode is per thread, as PyTorch's is: one thread's ``no_grad()``
    (a web request, an evaluation) never switches off another thread's graph."""

    enabled = True


_grad_mode = _GradMode()


@contextlib.contextmanager
def _grad_mode_set(enabled: bool):
    previous, _grad_mode.enabled = _grad_mode.enabled, enabled
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def no_grad():
    """Within this block this thread's ops record no graph (inference, optimizer updates)."""
    return _grad_mode_set(False)


def enable_grad():
    """Within this block this thread's ops record a graph, even inside ``no_grad()``."""
    return _grad_mode_set(True)


def is_grad_enabled() -> bool:
    """Whether ops run by the calling thread record a graph."""
    return _grad_mode.enabled


class _Tape(threading.local):
    """The trace (``scratchllm.explain.trace``) this thread is recording, if any.
    Modules and ops hand it the values they compute only while one is active:
    otherwise the cost is this one attribute check."""

    active = None


tape = _Tape()


def record(name: str, t):
    """Hand ``t`` to the trace this thread is recording, as ``name`` within the
    running module; return ``t`` unchanged. Without a trace it does nothing."""
    if tape.active is not None:
        tape.active.record(name, t)
    return t


def _as_array(data, dtype=None):
    """Arrays keep their dtype; Python numbers and lists of floats become float32."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return xp.asarray(data, dtype=dtype)
    if isinstance(data, xp.ndarray):
        return data
    arr = xp.asarray(data)
    return arr.astype(DEFAULT_DTYPE) if arr.dtype == xp.float64 else arr


class Tensor:
    """An n-dimensional array that can carry a gradient.

    ``data`` is the array, ``grad`` its gradient after ``backward()`` (same
    shape and dtype), ``requires_grad`` whether gradients flow to it.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "__weakref__")
    __array_priority__ = 100  # so ndarray + Tensor defers to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None

    # ---- properties -------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def T(self):
        """All dimensions reversed."""
        return transpose(self)

    @property
    def is_leaf(self):
        return self._backward is None

    def __len__(self):
        return len(self.data)

    def numpy(self):
        return to_numpy(self.data)

    def item(self):
        return self.data.item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def astype(self, dtype) -> "Tensor":
        src_dtype = self.dtype
        return _op(self.data.astype(dtype), (self,), lambda g: (g.astype(src_dtype),))

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    # ---- autograd ---------------------------------------------------------
    def backward(self, grad=None, leaf_grads: dict | None = None, retain: dict | None = None):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that
        requires a gradient. ``grad`` defaults to 1 for a scalar. With
        ``leaf_grads`` (a dict) the leaves' gradients go there instead, keyed
        by ``id(leaf)``, and no ``.grad`` is touched: graphs of one model
        built by several threads then never write the same array.

        ``retain`` (a dict keyed by ``id(t)``) asks for the gradients of
        tensors inside the graph as well, as PyTorch's ``retain_grad()``: each
        is stored there (a copy) when the walk reaches it, the only moment it
        exists, since the walk frees the graph as it goes."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if self._backward is _freed:
            _freed(grad)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() needs a gradient for a non-scalar tensor of shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            grad = xp.broadcast_to(grad, self.shape)
        order = _topological_order(self)
        grads = {id(self): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if retain is not None and id(node) in retain:
                retain[id(node)] = xp.array(xp.broadcast_to(g, node.shape), dtype=node.dtype, copy=True)
            if node._backward is None:  # a leaf
                if leaf_grads is None:
                    _accumulate_leaf(node, g)
                else:
                    _accumulate_into(leaf_grads, node, g)
                continue
            parent_grads = node._backward(g)
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                key = id(parent)
                prev = grads.get(key)
                grads[key] = pg if prev is None else prev + pg
            node._backward = _freed  # free the cached forward arrays
            node._parents = ()

    def zero_grad(self):
        self.grad = None

    # ---- operators --------------------------------------------------------
    def __add__(self, other):
        return add(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __neg__(self):
        return neg(self)

    def __pow__(self, exponent):
        return pow(self, exponent)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __getitem__(self, index):
        return getitem(self, index)

    # ---- methods ----------------------------------------------------------
    # Named and behaving as PyTorch's (dim, keepdim); NumPy's axis/keepdims work too.
    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        return sum(self, *_dims(dim, keepdim, axis, keepdims))

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        return mean(self, *_dims(dim, keepdim, axis, keepdims))

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The maximum of all elements; over ``dim``, as PyTorch's, ``(values,
        indices)`` of the first maximum; over ``axis`` (NumPy's), the values alone."""
        if dim is None:
            return max(self, *_dims(dim, keepdim, axis, keepdims))
        if axis is not None:
            raise TypeError("give dim or axis, not both")
        return max_at(self, dim, keepdim)

    def exp(self):
        return exp(self)

    def log(self):
        return log(self)

    def sqrt(self):
        return pow(self, 0.5)

    def reshape(self, *shape):
        """``reshape(2, -1)`` or ``reshape((2, -1))``; one -1 is inferred."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    view = reshape

    def transpose(self, dim0, dim1):
        """Swap two dimensions, as PyTorch's (NumPy's reordering of all of them is ``permute``)."""
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return transpose(self, tuple(dims))

    swapaxes = transpose

    def permute(self, *dims):
        """Reorder the dimensions: ``permute(0, 2, 1)`` or ``permute((0, 2, 1))``."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if sorted(d % self.ndim for d in dims) != list(range(self.ndim)):
            raise ValueError(f"permute{tuple(dims)} is not a reordering of {self.ndim} dimensions")
        return transpose(self, dims)

    def split(self, sections, axis=-1):
        return split(self, sections, axis)


def _freed(g):
    raise RuntimeError(
        "backward() through a graph already used by an earlier backward(): "
        "its cached arrays are freed; run the forward pass again"
    )


def _topological_order(root):
    order, seen, stack = [], set(), [(root, False)]
    while stack:  # iterative DFS: deep graphs must not hit the recursion limit
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p.requires_grad and id(p) not in seen:
                stack.append((p, False))
    return order


def _added(prev, leaf, g):
    """``prev + g`` for a leaf's gradient, in place when ``prev`` exists."""
    g = g if g.shape == leaf.shape else xp.broadcast_to(g, leaf.shape)
    if prev is None:
        # A copy: ``g`` may be a view of, or the same array as, another grad.
        return xp.array(g, dtype=leaf.dtype, copy=True)
    prev += g
    return prev


def _accumulate_leaf(leaf, g):
    leaf.grad = _added(leaf.grad, leaf, g)


def _accumulate_into(store: dict, leaf, g):
    store[id(leaf)] = _added(store.get(id(leaf)), leaf, g)


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    return data if isinstance(data, Tensor) else Tensor(data, requires_grad, dtype)


def _wrap(x, like=None):
    """Scalars and arrays join the graph as constants of ``like``'s dtype."""
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype if like is not None and not isinstance(x, xp.ndarray) else None
    return Tensor(xp.asarray(x, dtype=dtype))


def _op(out, parents, backward) -> Tensor:
    """Wrap ``out`` as a Tensor and, if gradients are needed, link it to its parents."""
    t = Tensor.__new__(Tensor)
    t.data, t.grad = out, None
    t._parents, t._backward = (), None
    t.requires_grad = _grad_mode.enabled and any(p.requires_grad for p in parents)
    if t.requires_grad:
        t._parents, t._backward = tuple(parents), backward
    return t


def unbroadcast(g, shape):
    """Sum ``g`` over the axes along which an array of ``shape`` was broadcast."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and g.shape[i + extra] != 1)
    g = g.sum(axis=axes, keepdims=True) if axes else g
    return g.reshape(shape)


# ---- elementwise arithmetic, broadcasting --------------------------------
def add(a, b) -> Tensor:
    a, b = _wrap(a, b if isinstance(b, Tensor) else None), _wrap(b, a if isinstance(a, Tensor) else None)
    return _op(a.data + b.data, (a, b), lambda g: (unbroadcast(g, a.shape), unbroadcast(g, b.shape)))


def sub(a, b) -> Tensor:
    a, b = _wrap(a, b if isinstance(b, Tensor) else None), _wrap(b, a if isinstance(a, Tensor) else None)
    return _op(a.data - b.data, (a, b), lambda g: (unbroadcast(g, a.shape), unbroadcast(-g, b.shape)))


def mul(a, b) -> Tensor:
    a, b = _wrap(a, b if isinstance(b, Tensor) else None), _wrap(b, a if isinstance(a, Tensor) else None)

    def backward(g):
        ga = unbroadcast(g * b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(g * a.data, b.shape) if b.requires_grad else None
        return ga, gb

    return _op(a.data * b.data, (a, b), backward)


def div(a, b) -> Tensor:
    a, b = _wrap(a, b if isinstance(b, Tensor) else None), _wrap(b, a if isinstance(a, Tensor) else None)
    out = a.data / b.data

    def backward(g):
        ga = unbroadcast(g / b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None
        return ga, gb

    return _op(out, (a, b), backward)


def neg(a) -> Tensor:
    return _op(-a.data, (a,), lambda g: (-g,))


def pow(a, exponent) -> Tensor:
    """``a ** exponent`` for a Python number ``exponent``."""
    if isinstance(exponent, Tensor):
        raise TypeError("only a scalar exponent is supported: a ** 2.0, not a ** tensor")
    e = float(exponent)
    out = a.data ** a.dtype.type(e)
    if e == 0:  # constant 1: zero gradient, also at a = 0 (where 0·a⁻¹ would give NaN)
        return _op(out, (a,), lambda g: (xp.zeros_like(a.data),))
    return _op(out, (a,), lambda g: (g * a.dtype.type(e) * a.data ** a.dtype.type(e - 1),))


def exp(a) -> Tensor:
    out = xp.exp(a.data)
    return _op(out, (a,), lambda g: (g * out,))


def log(a) -> Tensor:
    return _op(xp.log(a.data), (a,), lambda g: (g / a.data,))


# ---- reductions ------------------------------------------------------------
def _dims(dim, keepdim, axis, keepdims):
    """(axis, keepdims) from PyTorch's spelling or NumPy's."""
    if dim is not None and axis is not None:
        raise TypeError("give dim or axis, not both")
    return (axis if dim is None else dim), bool(keepdim or keepdims)


def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(ax % ndim for ax in axes)


def _expand_reduced(g, shape, axes, keepdims):
    """Give ``g`` back the reduced axes so it broadcasts against ``shape``."""
    if not keepdims:
        g = xp.expand_dims(g, axes)
    return g


def sum(a, axis=None, keepdims=False) -> Tensor:
    axes = _normalize_axes(axis, a.ndim)
    out = a.data.sum(axis=axes, keepdims=keepdims)
    return _op(out, (a,), lambda g: (xp.broadcast_to(_expand_reduced(g, a.shape, axes, keepdims), a.shape),))


def mean(a, axis=None, keepdims=False) -> Tensor:
    axes = _normalize_axes(axis, a.ndim)
    n = 1
    for ax in axes:
        n *= a.shape[ax]
    out = a.data.mean(axis=axes, keepdims=keepdims)
    scale = a.dtype.type(1.0 / n)
    return _op(out, (a,), lambda g: (xp.broadcast_to(_expand_reduced(g, a.shape, axes, keepdims) * scale, a.shape),))


def max(a, axis=None, keepdims=False) -> Tensor:
    """Maximum; the gradient is shared equally between tied maxima."""
    axes = _normalize_axes(axis, a.ndim)
    out = a.data.max(axis=axes, keepdims=True)

    def backward(g):
        hit = a.data == out
        share = hit / hit.sum(axis=axes, keepdims=True)
        return (_expand_reduced(g, a.shape, axes, keepdims) * share.astype(a.dtype),)

    return _op(out if keepdims else out.squeeze(axes), (a,), backward)


class MaxResult(tuple):
    """``(values, indices)``, as PyTorch's ``max(dim)`` returns."""

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


def max_at(a, dim: int, keepdim=False) -> MaxResult:
    """Maximum along ``dim`` and the index of its first occurrence, as
    ``torch.max(a, dim)``; the gradient goes to that index alone."""
    dim = dim % a.ndim
    idx = xp.expand_dims(a.data.argmax(axis=dim), dim)  # (…, 1, …)
    out = xp.take_along_axis(a.data, idx, axis=dim)

    def backward(g):
        full = xp.zeros_like(a.data)
        xp.put_along_axis(full, idx, g if keepdim else xp.expand_dims(g, dim), axis=dim)
        return (full,)

    values = _op(out if keepdim else out.squeeze(dim), (a,), backward)
    return MaxResult((values, Tensor(idx if keepdim else idx.squeeze(dim))))


# ---- shapes and indexing -------------------------------------------------
def reshape(a, shape) -> Tensor:
    return _op(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.shape),))


def transpose(a, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None), as ``ndarray.transpose``."""
    axes = tuple(range(a.ndim))[::-1] if axes is None else tuple(ax % a.ndim for ax in axes)
    inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    return _op(a.data.transpose(axes), (a,), lambda g: (g.transpose(inverse),))


def _is_basic(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (slice, int, type(None), type(Ellipsis))) for i in items)


def getitem(a, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    basic = _is_basic(index)

    def backward(g):
        full = xp.zeros_like(a.data)
        if basic:  # a view: each element is picked at most once
            full[index] = g
        else:
            xp.add.at(full, index, g)  # repeated integer indices accumulate
        return (full,)

    return _op(a.data[index], (a,), backward)


def concatenate(tensors, axis=0) -> Tensor:
    tensors = [_wrap(t) for t in tensors]
    axis = axis % tensors[0].ndim
    bounds = xp.cumsum([t.shape[axis] for t in tensors])[:-1]
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    return _op(out, tensors, lambda g: tuple(xp.split(g, bounds, axis=axis)))


def stack(tensors, axis=0) -> Tensor:
    tensors = [_wrap(t) for t in tensors]
    out = xp.stack([t.data for t in tensors], axis=axis)
    ax = axis % out.ndim
    return _op(out, tensors, lambda g: tuple(xp.moveaxis(g, ax, 0)))


def split(a, sections, axis=-1):
    """Split into ``sections`` equal parts (an int) or at the given sizes (a list)."""
    axis = axis % a.ndim
    if isinstance(sections, int):
        if a.shape[axis] % sections:
            raise ValueError(f"cannot split axis of length {a.shape[axis]} into {sections} equal parts")
        sizes = [a.shape[axis] // sections] * sections
    else:
        sizes = list(sections)
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    if starts[-1] != a.shape[axis]:
        raise ValueError(f"split sizes {sizes} do not add up to {a.shape[axis]}")
    parts = []
    for lo, hi in zip(starts[:-1], starts[1:]):
        index = (slice(None),) * axis + (slice(lo, hi),)
        parts.append(getitem(a, index))
    return parts


def where(cond, a, b) -> Tensor:
    cond = cond.data if isinstance(cond, Tensor) else xp.asarray(cond)
    a, b = _wrap(a, b if isinstance(b, Tensor) else None), _wrap(b, a if isinstance(a, Tensor) else None)
    zero = xp.zeros((), dtype=xp.result_type(a.dtype, b.dtype))

    def backward(g):
        ga = unbroadcast(xp.where(cond, g, zero), a.shape) if a.requires_grad else None
        gb = unbroadcast(xp.where(cond, zero, g), b.shape) if b.requires_grad else None
        return ga, gb

    return _op(xp.where(cond, a.data, b.data), (a, b), backward)


def matmul(a, b) -> Tensor:
    """``a @ b`` with NumPy's broadcasting of leading (batch) axes."""
    a, b = _wrap(a), _wrap(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs at least 2-D operands, got shapes {a.shape} and {b.shape}")

    def backward(g):
        ga = unbroadcast(g @ xp.swapaxes(b.data, -1, -2), a.shape) if a.requires_grad else None
        gb = unbroadcast(xp.swapaxes(a.data, -1, -2) @ g, b.shape) if b.requires_grad else None
        return ga, gb

    return _op(a.data @ b.data, (a, b), backward)
