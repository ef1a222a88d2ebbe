"""``scratchllm explore``: a local web page over a checkpoint's own numbers."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from ..errors import ScratchError

DESCRIPTION = """\
Start a web page on this computer that shows a trained model at work: the
text's tokens and the next-token distribution (temperature, top-k, top-p),
generated text as it is sampled, every attention head, the inside of each
block, the backward pass with one SGD step taken on a copy (the checkpoint is
never written), the token embeddings, the run's loss curves (refreshed while
`scratchllm train` still writes them) and, for a Transformer, translations
with their cross-attention. Everything runs offline; Ctrl-C stops it."""


def register(subparsers):
    p = subparsers.add_parser("explore", help="a local web page showing a model's attention, gradients and training",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", "--model", dest="ckpt", default="out", metavar="PATH",
                   help="a checkpoint directory, a run directory holding ckpt/ and log.jsonl, a Hugging Face model "
                        "directory or a GGUF file; --model is another spelling (default: out)")
    p.add_argument("--port", default="8000", metavar="N", help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this computer only); another address lets "
                        "other computers reach the page")
    p.add_argument("--open", action="store_true", help="open the page in the web browser")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args):
    from ..explore import Explorer, make_server
    from . import number

    port = number(args.port, "--port", int, low=0)
    if port > 65535:
        raise ScratchError(f"--port must be at most 65535, got {port}")
    explorer = Explorer(args.ckpt)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address can use the page "
              "(and your CPU); the default 127.0.0.1 keeps it to this computer", file=sys.stderr)
    try:
        server = make_server(explorer, args.host, port)
    except OSError as e:
        raise ScratchError(f"cannot listen on {args.host}:{port} ({e.strerror or e}); "
                           "try another --port, or --port 0 for a free one") from None
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{server.server_port}/"
    try:  # from here on Ctrl-C stops the server, wherever it lands
        print(f"{explorer.kind} from {explorer.ckpt_dir}: open {url}  (Ctrl-C stops)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
