"""A local web page over a model's own numbers: ``scratchllm explore --ckpt DIR``.

:mod:`.api` answers the page's questions from the model and its trace,
:mod:`.server` serves the page (static/) and those answers on 127.0.0.1.
"""
from .api import Explorer
from .server import make_server, serve_in_thread

__all__ = ["Explorer", "make_server", "serve_in_thread"]
