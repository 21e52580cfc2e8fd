"""segkit in a web browser.

  python -m segkit.web build model=<model.onnx>[,<model.int8.onnx>...] out=<dir>
                            [runtime=<onnxruntime-web dist/ folder>] [webgpu=true|false] [image=<picture>]
  python -m segkit.web serve <dir> [--port 8000] [--host 127.0.0.1] [--no-isolation]
  python -m segkit.web serve dir=<dir> [port=8000] [host=127.0.0.1] [isolation=true|false]

build: writes a static app (index.html, app.mjs, the models, ONNX Runtime Web) for segkit exports taken
with preprocess=true argmax=true. The runtime comes from `make web-runtime` (a pinned npm install).
serve: serves the folder on localhost with the cross-origin isolation headers that WASM threads need
(--no-isolation: without them, one thread). Ctrl-C stops it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

BUILD_KEYS = ("model", "out", "runtime", "webgpu", "image")
SERVE_KEYS = ("dir", "port", "host", "isolation")
FLAGS = {"--port": "port", "--host": "host", "--dir": "dir"}


class UsageError(ValueError):
    """A mistake on the command line; the message names the argument."""


def _bool(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{key}={value}: expected true or false")


def parse_args(command: str, argv: Sequence[str]) -> dict[str, str]:
    """``key=value``, ``--flag value`` / ``--flag=value`` and (serve) one bare folder -> {key: value}."""
    keys = BUILD_KEYS if command == "build" else SERVE_KEYS
    out: dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--no-isolation" and command == "serve":
            out["isolation"] = "false"
        elif arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            if flag not in FLAGS or FLAGS[flag] not in keys:
                raise UsageError(f"unknown option {flag} (see --help)")
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{flag} needs a value")
                i += 1
                value = args[i]
            out[FLAGS[flag]] = value
        elif "=" in arg:
            key, _, value = arg.partition("=")
            if key not in keys:
                raise UsageError(f"unknown key {key!r} for {command} (keys: {', '.join(keys)})")
            out[key] = value
        elif command == "serve" and "dir" not in out:
            out["dir"] = arg
        else:
            raise UsageError(f"unexpected argument {arg!r} (see --help)")
        i += 1
    return out


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UsageError(f"port={value}: expected a number from 0 to 65535")
    return port


def build(opts: dict[str, str]) -> int:
    """The ``build`` command."""
    from segkit.web.app import write_web_app

    if not opts.get("model"):
        raise UsageError("model=<model.onnx> is required (several: model=a.onnx,b.int8.onnx)")
    if not opts.get("out"):
        raise UsageError("out=<folder to write the app to> is required")
    models = [m for m in opts["model"].split(",") if m]
    webgpu = _bool("webgpu", opts.get("webgpu", "true"))
    out = write_web_app(
        opts["out"], models, runtime_dir=opts.get("runtime"), webgpu=webgpu, sample_image=opts.get("image")
    )
    print(
        f"web app written to {out} ({len(models)} model(s)); serve it with: python -m segkit.web serve {out}"
    )
    return 0


def serve(opts: dict[str, str]) -> int:
    """The ``serve`` command: serves until Ctrl-C."""
    from segkit.web.server import make_server

    if not opts.get("dir"):
        raise UsageError("the folder to serve is required: python -m segkit.web serve <dir>")
    port = _port(opts.get("port", "8000"))
    host = opts.get("host", "127.0.0.1")
    isolate = _bool("isolation", opts.get("isolation", "true"))
    try:
        server = make_server(opts["dir"], port, host, isolate=isolate)
    except NotADirectoryError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    mode = "cross-origin isolated: WASM threads on" if isolate else "not isolated: one WASM thread"
    print(f"serving {opts['dir']} at http://{shown}:{server.server_port}/ ({mode}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("build", "serve"):
        print(f"segkit.web: unknown command {command!r}: use build or serve (see --help)", file=sys.stderr)
        return 2
    from segkit.web.app import WebAppError

    try:
        opts = parse_args(command, rest)
        return build(opts) if command == "build" else serve(opts)
    except (UsageError, WebAppError) as exc:
        print(f"segkit.web {command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
