"""Build the in-browser app: a static folder with the page, segkit ONNX exports and ONNX Runtime Web.

The page (``static/``) reads everything about a model from the model file's own metadata, so the folder
works offline and for any segkit export taken with ``preprocess=true argmax=true`` (uint8 RGB in, uint8
trainId mask out: the browser feeds pixels and draws the mask, nothing else).
ONNX Runtime Web's files are copied from the npm package that ``make web-runtime`` installs (no CDN).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

#: onnxruntime-web release the app is built and tested with (the pin of .web/package.json).
ORT_WEB_VERSION = "1.31.1"
#: Where ``make web-runtime`` installs it, relative to the repository root.
RUNTIME_SUBDIR = Path(".web/node_modules/onnxruntime-web/dist")
#: The CPU build: ES module, its Emscripten loader and the SIMD + threads WebAssembly binary.
WASM_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: The WebGPU build (operators WebGPU lacks run on its WebAssembly part).
WEBGPU_FILES = (
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
#: ``format`` of a segkit export's metadata (segkit.export.metadata.ONNX_FORMAT; read here without torch).
SEGKIT_FORMAT = "segkit-onnx"
#: The page's own files, package data of segkit.web.
STATIC_FILES = ("index.html", "app.mjs", "segkit.mjs", "style.css")


class WebAppError(ValueError):
    """The app cannot be built; the one-line message names the file or setting and what to do."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_runtime(runtime_dir: str | os.PathLike | None = None, webgpu: bool = True) -> Path:
    """The onnxruntime-web ``dist/`` folder: ``runtime_dir`` if given, else the one ``make web-runtime`` fills

    Raises WebAppError naming the folder looked in when a needed file is missing.
    """
    needed = WASM_FILES + (WEBGPU_FILES if webgpu else ())
    if runtime_dir is not None:
        candidates = [Path(runtime_dir)]
    else:
        env = os.environ.get("SEGKIT_ORT_WEB_DIR")
        candidates = [Path(env)] if env else [_repo_root() / RUNTIME_SUBDIR, Path.cwd() / RUNTIME_SUBDIR]
    for cand in candidates:
        if all((cand / f).is_file() for f in needed):
            return cand
    looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
    first = candidates[0]
    missing = [f for f in needed if not (first / f).is_file()]
    raise WebAppError(
        f"onnxruntime-web runtime files not found in {looked} (missing {', '.join(missing)}): run "
        f"`make web-runtime` (npm install of onnxruntime-web {ORT_WEB_VERSION}) or pass the package's "
        "dist/ folder"
    )


def runtime_version(runtime_dir: Path) -> str:
    """The version in the package.json above ``dist/`` (empty when there is none)."""
    try:
        return str(json.loads((runtime_dir.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return ""


def check_web_model(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a segkit ONNX export the page can run; WebAppError naming the file otherwise."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise WebAppError(f"model file not found: {path}")
    if path.suffix.lower() != ".onnx":
        raise WebAppError(f"{path}: the web app takes ONNX exports (.onnx)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise WebAppError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    meta: dict[str, Any] = {}
    for prop in proto.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    if meta.get("format") != SEGKIT_FORMAT:
        raise WebAppError(f"{path} is not a segkit export (no format={SEGKIT_FORMAT!r} in its metadata)")
    if meta.get("input_kind") != "uint8" or meta.get("output_kind") != "mask":
        raise WebAppError(
            f"{path} takes {meta.get('input_kind')} input and returns {meta.get('output_kind')}: the web app "
            "needs an export with preprocess=true argmax=true (RGB pixels in, trainId mask out)"
        )
    return meta


def _label(meta: dict[str, Any], nbytes: int) -> str:
    h, w = meta.get("input_size") or ("?", "?")
    return (
        f"{meta.get('model_name') or 'model'} {meta.get('precision', 'fp32')} {h}x{w} ({nbytes / 1e6:.1f} MB)"
    )


def write_web_app(
    out_dir: str | os.PathLike,
    model_paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    runtime_dir: str | os.PathLike | None = None,
    webgpu: bool = True,
    sample_image: str | os.PathLike | None = None,
    title: str = "segkit in the browser",
) -> Path:
    """Write the static web app for ``model_paths`` (``model.onnx``, ``model.int8.onnx``) to ``out_dir``.

    The models must be segkit exports with ``preprocess=true argmax=true``; the first one opens first.
    ``webgpu=False`` leaves out the WebGPU build of the runtime (about 29 MB). ``sample_image`` is shown
    when the page opens. Serve the folder with ``python -m segkit.web serve <out_dir>``. Returns ``out_dir``.
    """
    paths = (
        [Path(model_paths)] if isinstance(model_paths, (str, os.PathLike)) else [Path(p) for p in model_paths]
    )
    if not paths:
        raise WebAppError("no model given: pass at least one segkit .onnx export")
    metas = [check_web_model(p) for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise WebAppError(
            f"two models share a file name ({', '.join(names)}): the app keeps them side by side"
        )
    if sample_image is not None and not Path(sample_image).is_file():
        raise WebAppError(f"sample image not found: {sample_image}")
    runtime = find_runtime(runtime_dir, webgpu=webgpu)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WebAppError(f"output folder {out} exists and is not a folder")
    (out / "ort").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    static = resources.files("segkit.web") / "static"
    for name in STATIC_FILES:
        (out / name).write_bytes((static / name).read_bytes())
    for name in WASM_FILES + (WEBGPU_FILES if webgpu else ()):
        shutil.copyfile(runtime / name, out / "ort" / name)
    models = []
    for path, meta in zip(paths, metas):
        shutil.copyfile(path, out / "models" / path.name)
        nbytes = path.stat().st_size
        models.append(
            {
                "file": f"models/{path.name}",
                "label": _label(meta, nbytes),
                "precision": meta.get("precision", "fp32"),
                "input_size": meta.get("input_size"),
                "bytes": nbytes,
            }
        )
    sample = None
    if sample_image is not None:
        sample = "sample" + Path(sample_image).suffix.lower()
        shutil.copyfile(sample_image, out / sample)
    config = {
        "title": title,
        "models": models,
        "webgpu": bool(webgpu),
        "sample": sample,
        "ort_version": runtime_version(runtime) or ORT_WEB_VERSION,
    }
    (out / "app.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
