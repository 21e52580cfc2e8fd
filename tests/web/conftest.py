"""Fixtures of the web app's tests: a small segkit model exported for the browser (fp32 and int8), the
built app, a server for it in a thread, and headless Chromium (the system's, through Playwright)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_helpers import random_checkpoint

from segkit.data import CityscapesDataset
from segkit.export import export_checkpoint, int8_path
from segkit.export.__main__ import load_config
from segkit.web import make_server, write_web_app
from segkit.web.headless import BrowserUnavailable, launch_chromium, start_playwright


@pytest.fixture(scope="session")
def web_models(sample_root, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 exports with preprocess=true argmax=true batch=1, through the export command's code."""
    out = tmp_path_factory.mktemp("web_models")
    train = CityscapesDataset(sample_root, "train", verbose=False)
    ckpt = random_checkpoint(out / "model.pt", [train.load(i)[0] for i in range(len(train))])
    onnx_path = out / "model.onnx"
    cfg = load_config(
        [
            f"checkpoint={ckpt}",
            f"output={onnx_path}",
            "preprocess=true",
            "argmax=true",
            "batch=1",
            "quantize=int8",
            f"verify.root={sample_root}",
            "verify.images=2",
            "calibration.images=4",
            # random weights: the mIoU gate means nothing here (its own tests live in test_quantize.py)
            "quantization.max_miou_drop=100",
            f"web={out / 'exported_app'}",  # the export command's own web key
        ]
    )
    report = export_checkpoint(cfg, log=lambda *_: None)
    return {
        "fp32": onnx_path,
        "int8": int8_path(onnx_path),
        "checkpoint": ckpt,
        "exported_app": Path(report["web"]["path"]),
    }


@pytest.fixture(scope="session")
def web_app(web_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app with both models (WASM runtime only: nothing here has WebGPU)."""
    return write_web_app(
        tmp_path_factory.mktemp("web_app") / "app", [web_models["fp32"], web_models["int8"]], webgpu=False
    )


def _serve(directory: Path, isolate: bool) -> Iterator[str]:
    server = make_server(directory, 0, isolate=isolate, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="session")
def app_url(web_app: Path) -> Iterator[str]:
    """The app served with the cross-origin isolation headers (WASM threads on)."""
    yield from _serve(web_app, isolate=True)


@pytest.fixture(scope="session")
def app_url_plain(web_app: Path) -> Iterator[str]:
    """The same app served without them (one WASM thread)."""
    yield from _serve(web_app, isolate=False)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium context; fails (never skips) with the install command when Chromium is missing."""
    try:
        pw = start_playwright()
    except BrowserUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        try:
            context = launch_chromium(pw, tmp_path_factory.mktemp("chromium_profile"))
        except BrowserUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            yield context
        finally:
            context.close()
    finally:
        pw.stop()
