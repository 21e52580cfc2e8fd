"""A static file server for the web app: the standard library's, plus the headers WASM threads need.

ONNX Runtime Web runs on several threads only in a cross-origin isolated page (SharedArrayBuffer), which
takes ``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp`` on
the page; ``.mjs`` must be served as JavaScript and ``.wasm`` as ``application/wasm`` (streaming compile).
"""

from __future__ import annotations

import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {
    ".mjs": "application/javascript",
    ".js": "application/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
    ".css": "text/css",
    ".html": "text/html",
}


class WebAppHandler(SimpleHTTPRequestHandler):
    """Serves one folder; ``isolate`` adds the cross-origin isolation headers, ``quiet`` drops the log."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    isolate = True
    quiet = False

    def end_headers(self) -> None:
        if self.isolate:
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")  # a rebuilt app is never mixed with cached files
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.quiet:
            super().log_message(format, *args)


class WebAppServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that does not print a traceback when a browser drops a connection."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def make_server(
    directory: str | os.PathLike,
    port: int = 8000,
    host: str = "127.0.0.1",
    *,
    isolate: bool = True,
    quiet: bool = False,
) -> WebAppServer:
    """A bound (not yet serving) server for ``directory``; ``port=0`` takes a free port (see server_port).

    Raises NotADirectoryError for a missing folder and OSError when the port cannot be bound.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a folder: {directory}")
    handler = type("Handler", (WebAppHandler,), {"isolate": isolate, "quiet": quiet})
    return WebAppServer((host, int(port)), partial(handler, directory=str(directory)))
