"""segkit in a web browser: a static page that runs a segkit ONNX export with ONNX Runtime Web.

``write_web_app(out_dir, [model.onnx, model.int8.onnx])`` builds the folder, ``python -m segkit.web serve
<dir>`` serves it with the headers that WASM threads need. Importing this package loads no model stack.
"""

from __future__ import annotations

from segkit.web.app import ORT_WEB_VERSION, WebAppError, check_web_model, find_runtime, write_web_app
from segkit.web.server import make_server

__all__ = [
    "ORT_WEB_VERSION",
    "WebAppError",
    "check_web_model",
    "find_runtime",
    "make_server",
    "write_web_app",
]
