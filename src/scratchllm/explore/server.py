"""The explore page's HTTP server: the standard library's ThreadingHTTPServer.

What it serves is fixed when it starts: the page's own files (listed once
from the package's static/ folder), plotly.js from the installed ``plotly``
package, and JSON answers from :class:`~scratchllm.explore.api.Explorer`.
A request's path is only ever looked up in that table, never joined to a
directory, so no path (``/../``, ``%2e%2e``, an absolute path) can reach
another file: anything else is 404.

A request the server cannot use (malformed JSON, a bad number, text too long
or with characters the tokenizer lacks) gets 400 and a one-line message; an
error of our own gets 500 with a one-line message, never a traceback; the
server keeps serving either way.
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from ..errors import ScratchError
from .api import BadRequest, Explorer

MAX_BODY = 64 * 1024  # bytes in a request body

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def plotly_js_path():
    """plotly.min.js as shipped inside the plotly Python package (no CDN, no network)."""
    try:
        import plotly
    except ImportError:
        raise ScratchError("the explore page draws its charts with plotly.js, shipped in the plotly package: "
                           "pip install plotly") from None
    path = resources.files(plotly) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ScratchError(f"plotly {plotly.__version__} has no package_data/plotly.min.js; reinstall plotly")
    return path


def static_files() -> dict:
    """URL path -> (bytes, content type) for every file the page needs, read once."""
    files = {}
    folder = resources.files(__package__) / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), _TYPES[suffix])
    files["/"] = files["/static/index.html"]
    files["/static/plotly.min.js"] = (plotly_js_path().read_bytes(), _TYPES[".js"])
    return files


class Handler(BaseHTTPRequestHandler):
    server_version = "scratchllm-explore"
    timeout = 60  # seconds a connection may sit idle (a body that never arrives ties up one thread only that long)
    explorer: Explorer  # set on the subclass made by make_server
    files: dict
    quiet = True

    # JSON endpoints: name -> Explorer method; GET ones take their fields from nothing
    POST = {"tokens", "next", "attention", "block", "backward", "step", "neighbours", "translate", "embeddings",
            "lens", "heads", "changes", "llama"}
    GET = {"info", "run", "embeddings", "heads", "changes"}

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)

    def _send(self, status, body: bytes, content_type: str, cache: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, obj):
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status, message):
        self._json(status, {"error": message})

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in self.files:
            body, kind = self.files[path]
            return self._send(200, body, kind, cache=path.endswith("plotly.min.js"))
        name = path[len("/api/"):] if path.startswith("/api/") else None
        if name in self.GET:
            return self._answer(name, {})
        self._error(404, "not found")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        name = path[len("/api/"):] if path.startswith("/api/") else None
        if name not in self.POST and name != "generate":
            return self._error(404, "not found")
        try:
            body = self._body()
        except BadRequest as e:
            return self._error(400, str(e))
        if name == "generate":
            return self._stream(body)
        self._answer(name, body)

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest(f"the request body must be at most {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def _answer(self, name, body):
        method = getattr(self.explorer, "next_token" if name == "next" else name)
        try:
            result = method(body)
        except BadRequest as e:
            return self._error(400, str(e))
        except ScratchError as e:  # the library refused the input
            return self._error(400, str(e).splitlines()[0] if str(e) else "bad request")
        except Exception as e:  # ours: one line, never a traceback page
            self._report(e)
            return self._error(500, f"internal error ({type(e).__name__}); see the server's terminal")
        self._json(200, result)

    def _stream(self, body):
        """Generated tokens as newline-delimited JSON, each line sent as soon as it is sampled."""
        started = []

        def emit(obj):
            if not started:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                started.append(True)
            self.wfile.write((json.dumps(obj) + "\n").encode())
            self.wfile.flush()

        try:
            self.explorer.generate(body, emit)
        except (BadRequest, ScratchError) as e:
            if not started:
                return self._error(400, str(e))
            emit({"done": True, "error": str(e)})
        except (BrokenPipeError, ConnectionResetError):  # the page went away mid-stream
            pass
        except Exception as e:
            self._report(e)
            if not started:
                return self._error(500, f"internal error ({type(e).__name__}); see the server's terminal")
            emit({"done": True, "error": f"internal error ({type(e).__name__})"})
        self.close_connection = True

    def _report(self, e):
        import traceback

        print(f"scratchllm explore: error answering {self.path}:", file=sys.stderr)
        traceback.print_exception(e, file=sys.stderr)


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> ThreadingHTTPServer:
    """A server (not yet serving) for ``explorer``; port 0 picks a free one (see ``server.server_port``)."""
    handler = type("ExploreHandler", (Handler,), {"explorer": explorer, "files": static_files(), "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(explorer: Explorer, host: str = "127.0.0.1", port: int = 0):
    """Start serving in a background thread; returns (server, url). Stop with server.shutdown()."""
    server = make_server(explorer, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_port}/"
