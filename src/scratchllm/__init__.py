"""scratchllm: language models from plain arithmetic up.

Every forward and backward pass is written by hand in NumPy; see
``scratchllm.functional`` for the ops and ``scratchllm.tensor`` for the graph.
"""
from importlib import import_module as _import_module

from .errors import ScratchError
from .tensor import Tensor, is_grad_enabled, no_grad, tensor

__version__ = "0.1.0"

_LAZY = {"functional", "nn", "optim", "models", "tokenizers", "data", "metrics", "checkpoint", "generate",
         "explain", "train", "translate", "hf", "plot", "gguf"}


def __getattr__(name):
    # Submodules load on first use so ``import scratchllm`` stays fast.
    if name in _LAZY:
        return _import_module(f".{name}", __name__)
    if name in ("load", "save"):
        return getattr(_import_module(".checkpoint", __name__), name)
    raise AttributeError(f"module 'scratchllm' has no attribute {name!r}")


__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "ScratchError", "__version__"]
