"""Building and serving the web app without a browser: the files written, the server's headers and MIME
types, the command line, clear one-line errors, and the page's pure JavaScript (segkit.mjs) run under
Node against the Python Predictor's geometry and segkit's metadata reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from web_helpers import REPO

from segkit.export.metadata import ONNX_FORMAT, read_onnx_metadata
from segkit.inference.predictor import prepare_image
from segkit.web import ORT_WEB_VERSION, WebAppError, find_runtime, make_server, write_web_app
from segkit.web.__main__ import main as cli
from segkit.web.app import SEGKIT_FORMAT, STATIC_FILES, WASM_FILES, WEBGPU_FILES

SEGKIT_MJS = REPO / "segkit" / "web" / "static" / "segkit.mjs"
NODE_CHECK = Path(__file__).with_name("node_check.mjs")


@pytest.fixture(scope="module")
def fake_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in dist/ folder with every runtime file (the builder only copies them)."""
    dist = tmp_path_factory.mktemp("node_modules") / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in WASM_FILES + WEBGPU_FILES:
        (dist / name).write_bytes(name.encode())
    (dist.parent / "package.json").write_text(json.dumps({"version": "9.9.9"}))
    return dist


def _tiny_segkit_onnx(path: Path, **overrides) -> Path:
    """A 1-node graph with segkit metadata (enough for the builder, which never runs the model)."""
    x = helper.make_tensor_value_info("rgb", TensorProto.UINT8, [1, 4, 4, 3])
    y = helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, 4, 4, 3])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["rgb"], ["mask"])], "g", [x], [y])
    )
    meta = {
        "format": ONNX_FORMAT,
        "model_name": "tiny",
        "class_names": ["a", "b"],
        "palette": [[1, 2, 3], [4, 5, 6]],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "input_size": [4, 4],
        "input_kind": "uint8",
        "input_layout": "NHWC",
        "output_kind": "mask",
        "precision": "fp32",
        "batch": 1,
        **overrides,
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=json.dumps(v))
    onnx.save(model, str(path))
    return path


def test_format_constant_matches_the_exporter() -> None:
    assert SEGKIT_FORMAT == ONNX_FORMAT


def test_write_web_app_writes_a_self_contained_folder(tmp_path, fake_runtime) -> None:
    a = _tiny_segkit_onnx(tmp_path / "m.onnx")
    b = _tiny_segkit_onnx(tmp_path / "m.int8.onnx", precision="int8")
    picture = tmp_path / "street.png"
    cv2.imwrite(str(picture), np.zeros((8, 8, 3), np.uint8))
    out = write_web_app(tmp_path / "app", [a, b], runtime_dir=fake_runtime, sample_image=picture)
    for name in STATIC_FILES:
        assert (out / name).read_bytes() == (SEGKIT_MJS.parent / name).read_bytes()
    for name in WASM_FILES + WEBGPU_FILES:
        assert (out / "ort" / name).read_bytes() == name.encode()
    assert (out / "models" / "m.onnx").read_bytes() == a.read_bytes()
    config = json.loads((out / "app.json").read_text())
    assert [m["file"] for m in config["models"]] == ["models/m.onnx", "models/m.int8.onnx"]
    assert [m["precision"] for m in config["models"]] == ["fp32", "int8"]
    assert config["models"][0]["input_size"] == [4, 4] and config["models"][0]["label"].startswith(
        "tiny fp32 4x4"
    )
    assert config["sample"] == "sample.png" and (out / "sample.png").is_file()
    assert config["webgpu"] is True and config["ort_version"] == "9.9.9"
    # nothing is fetched from elsewhere at run time: every module the page imports is in the folder
    html = (out / "index.html").read_text() + (out / "app.mjs").read_text()
    assert "http://" not in html and "https://" not in html
    lean = write_web_app(tmp_path / "lean", a, runtime_dir=fake_runtime, webgpu=False)
    assert sorted(p.name for p in (lean / "ort").iterdir()) == sorted(WASM_FILES)
    assert json.loads((lean / "app.json").read_text())["webgpu"] is False


def test_write_web_app_errors_name_the_file(tmp_path, fake_runtime) -> None:
    good = _tiny_segkit_onnx(tmp_path / "good.onnx")
    logits = _tiny_segkit_onnx(tmp_path / "logits.onnx", input_kind="float", output_kind="logits")
    foreign = tmp_path / "foreign.onnx"
    plain = onnx.load(str(good))
    del plain.metadata_props[:]
    onnx.save(plain, str(foreign))
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    cases = [
        ([tmp_path / "missing.onnx"], "model file not found: .*missing.onnx"),
        ([logits], "logits.onnx takes float input and returns logits.*preprocess=true argmax=true"),
        ([foreign], "foreign.onnx is not a segkit export"),
        ([text], "notes.onnx is not an ONNX model"),
        ([], "no model given"),
        ([good, tmp_path / "x" / "good.onnx"], "model file not found"),
    ]
    for paths, pattern in cases:
        with pytest.raises(WebAppError, match=pattern):
            write_web_app(tmp_path / "app", paths, runtime_dir=fake_runtime)
    (tmp_path / "x").mkdir()
    shutil.copyfile(good, tmp_path / "x" / "good.onnx")
    with pytest.raises(WebAppError, match="share a file name"):
        write_web_app(tmp_path / "app", [good, tmp_path / "x" / "good.onnx"], runtime_dir=fake_runtime)
    with pytest.raises(WebAppError, match=r"not found in .*empty.*make web-runtime"):
        write_web_app(tmp_path / "app", [good], runtime_dir=tmp_path / "empty")
    with pytest.raises(WebAppError, match="sample image not found"):
        write_web_app(tmp_path / "app", [good], runtime_dir=fake_runtime, sample_image=tmp_path / "nope.png")


def test_runtime_pin_is_one_version() -> None:
    """segkit.web's pin, .web/package.json and its lockfile name the same onnxruntime-web release, and the
    lockfile records no download addresses."""
    pkg = json.loads((REPO / ".web" / "package.json").read_text())
    lock_text = (REPO / ".web" / "package-lock.json").read_text()
    lock = json.loads(lock_text)
    assert pkg["dependencies"]["onnxruntime-web"] == ORT_WEB_VERSION
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == ORT_WEB_VERSION
    assert '"resolved"' not in lock_text


def test_the_installed_runtime_is_the_pinned_one() -> None:
    """`make web-runtime` has run (make test depends on it) and installed the pinned release."""
    try:
        dist = find_runtime()
    except WebAppError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert json.loads((dist.parent / "package.json").read_text())["version"] == ORT_WEB_VERSION


def _get(url: str) -> tuple[int, Any, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, b""


@pytest.mark.parametrize("isolate", [True, False])
def test_server_headers_and_mime_types(tmp_path, isolate: bool) -> None:
    files = {
        "index.html": "text/html",
        "app.mjs": "application/javascript",
        "x.js": "application/javascript",
        "ort.wasm": "application/wasm",
        "m.onnx": "application/octet-stream",
        "app.json": "application/json",
    }
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    server = make_server(tmp_path, 0, quiet=True, isolate=isolate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert server.server_address[0] == "127.0.0.1"
        for name, mime in files.items():
            status, headers, body = _get(f"{base}/{name}")
            assert status == 200 and body == b"x"
            assert headers["Content-Type"].split(";")[0] == mime, name
            assert headers.get("Cross-Origin-Opener-Policy") == ("same-origin" if isolate else None)
            assert headers.get("Cross-Origin-Embedder-Policy") == ("require-corp" if isolate else None)
        assert _get(f"{base}/missing.txt")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_cli_help_is_instant_and_loads_no_model_stack() -> None:
    code = (
        "import sys; from segkit.web.__main__ import main; main(['--help']); "
        "print(sorted({'torch', 'onnx', 'cv2'} & set(sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "python -m segkit.web serve <dir>" in res.stdout and "build model=" in res.stdout
    assert res.stdout.strip().endswith("[]"), res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "segkit.web", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "--no-isolation" in res.stdout


def test_cli_mistakes_are_one_line(tmp_path, capsys, fake_runtime) -> None:
    cases = [
        (["serve", str(tmp_path / "nowhere")], "not a folder: .*nowhere"),
        (["serve", str(tmp_path), "--port", "http"], "port=http: expected a number"),
        (["serve", f"dir={tmp_path}", "port=70000"], "port=70000"),
        (["serve", str(tmp_path), "colour=red"], "unknown key 'colour' for serve"),
        (["serve", str(tmp_path), "--bogus"], "unknown option --bogus"),
        (["serve", f"dir={tmp_path}", "isolation=maybe"], "isolation=maybe: expected true or false"),
        (["serve"], "folder to serve is required"),
        (["build", f"out={tmp_path / 'app'}"], "model=<model.onnx> is required"),
        (["build", f"model={tmp_path / 'm.onnx'}", f"out={tmp_path / 'app'}"], "model file not found"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ]
    for argv, pattern in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert __import__("re").search(pattern, err), (argv, err)


def test_cli_build_then_serve_key_value_style(tmp_path, capsys, fake_runtime) -> None:
    model = _tiny_segkit_onnx(tmp_path / "m.onnx")
    out = tmp_path / "app"
    assert cli(["build", f"model={model}", f"out={out}", f"runtime={fake_runtime}", "webgpu=false"]) == 0
    assert "python -m segkit.web serve" in capsys.readouterr().out
    assert (out / "index.html").is_file() and (out / "models" / "m.onnx").is_file()
    # a port already taken: one line saying so
    busy = make_server(out, 0, quiet=True)
    try:
        assert cli(["serve", f"dir={out}", f"port={busy.server_port}"]) == 2
        assert "pick another --port" in capsys.readouterr().err
    finally:
        busy.server_close()


# ---------------------------------------------------------------------------------------------- Node
def _node(job: dict, tmp_path: Path) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: the web runtime (make web-runtime) needs Node.js and npm", pytrace=False
        )
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    res = subprocess.run(
        [node, str(NODE_CHECK), str(SEGKIT_MJS), str(path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_page_geometry_is_the_predictors_bit_for_bit(tmp_path) -> None:
    """The page's resize (OpenCV INTER_LINEAR, fixed point), mean padding and nearest-neighbour way back equal
    the Predictor's on many size pairs: downscale, upscale, one axis, exact 2x, odd sizes."""
    rng = np.random.default_rng(0)
    mean = [0.485, 0.456, 0.406]
    sizes = [
        (150, 220, 128, 256),
        (90, 140, 128, 256),
        (128, 256, 128, 256),
        (1024, 2048, 512, 1024),
        (720, 1280, 512, 1024),
        (300, 500, 128, 256),
        (37, 91, 128, 256),
        (5, 4, 100, 2),
        (9, 20, 100, 10),
        (5, 700, 64, 64),
        (480, 100, 33, 47),
    ]
    sizes += [tuple(int(v) for v in rng.integers(5, 400, 4)) for _ in range(12)]
    tasks, images = [], []
    for i, (h, w, th, tw) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (tmp_path / f"in{i}").write_bytes(img.tobytes())
        images.append(img)
        tasks.append(
            {
                "kind": "prepare",
                "input": str(tmp_path / f"in{i}"),
                "output": str(tmp_path / f"out{i}"),
                "height": h,
                "width": w,
                "meta": {"input_size": [th, tw], "mean": mean},
            }
        )
    masks = []
    for j, (vh, vw, W, h, w) in enumerate(
        [
            (64, 109, 128, 100, 170),
            (128, 188, 256, 150, 220),
            (7, 5, 9, 300, 2),
            (40, 40, 40, 40, 40),
            (33, 47, 47, 16, 20),
        ]
    ):
        full = rng.integers(0, 19, (max(vh, 1), W), dtype=np.uint8)
        (tmp_path / f"m{j}").write_bytes(full.tobytes())
        masks.append((full, vh, vw, h, w))
        tasks.append(
            {
                "kind": "mask",
                "input": str(tmp_path / f"m{j}"),
                "output": str(tmp_path / f"mo{j}"),
                "W": W,
                "valid": [vh, vw],
                "height": h,
                "width": w,
            }
        )
    fit_sizes = [[int(a), int(b), int(c), int(d)] for a, b, c, d in rng.integers(1, 3000, (200, 4))]
    fit_sizes += [[5, 4, 10, 2], [4, 5, 2, 10], [9, 4, 100, 2], [7, 2, 9, 1]]  # x.5: Python rounds to even
    tasks.append({"kind": "fit", "sizes": fit_sizes})
    results = _node({"tasks": tasks}, tmp_path)
    for i, ((h, w, th, tw), img) in enumerate(zip(sizes, images)):
        canvas, valid = prepare_image(img, (th, tw), mean)
        got = np.frombuffer((tmp_path / f"out{i}").read_bytes(), np.uint8).reshape(th, tw, 3)
        assert tuple(results[i]["valid"]) == valid, (h, w, th, tw)
        assert np.array_equal(got, canvas), ((h, w, th, tw), int((got != canvas).sum()))
    for j, (full, vh, vw, h, w) in enumerate(masks):
        crop = np.ascontiguousarray(full[:vh, :vw])
        expected = crop if (vh, vw) == (h, w) else cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
        got = np.frombuffer((tmp_path / f"mo{j}").read_bytes(), np.uint8).reshape(h, w)
        assert np.array_equal(got, expected), (vh, vw, h, w)
    from segkit.inference.predictor import fit_size

    assert results[-1]["fit"] == [list(fit_size((a, b), (c, d))) for a, b, c, d in fit_sizes]


def test_page_reads_metadata_like_segkit(tmp_path) -> None:
    """segkit.mjs's protobuf reader returns the metadata segkit's own reader does, and rejects non-models."""
    good = _tiny_segkit_onnx(
        tmp_path / "good.onnx", class_names=["road", "sky ☀"], palette=[[0, 0, 0], [255, 255, 255]]
    )
    foreign = tmp_path / "foreign.onnx"
    plain = onnx.load(str(good))
    del plain.metadata_props[:]
    onnx.save(plain, str(foreign))
    (tmp_path / "text.onnx").write_text("hello, I am not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "trunc.onnx").write_bytes(good.read_bytes()[:-7])
    bad_palette = _tiny_segkit_onnx(tmp_path / "pal.onnx", palette=[[0, 0, 0]])
    names = ["good.onnx", "foreign.onnx", "text.onnx", "empty.onnx", "trunc.onnx", "pal.onnx"]
    tasks = [{"kind": "metadata", "input": str(tmp_path / n), "name": n} for n in names]
    res = dict(zip(names, _node({"tasks": tasks}, tmp_path)))
    expected = read_onnx_metadata(good)
    assert {k: res["good.onnx"]["meta"][k] for k in expected} == expected
    assert (
        res["foreign.onnx"]["name"] == "SegkitModelError"
        and "not a segkit export" in res["foreign.onnx"]["error"]
    )
    for n in ("text.onnx", "empty.onnx", "trunc.onnx"):
        assert res[n]["name"] == "SegkitModelError" and f"{n} is not an ONNX model" in res[n]["error"], res[n]
    assert "pal.onnx: metadata palette=" in res["pal.onnx"]["error"]
    assert bad_palette.is_file()


def test_the_export_command_writes_the_app_with_both_precisions(web_models) -> None:
    """``python -m segkit.export ... web=<dir>``: the same folder write_web_app makes, both models in it."""
    app = web_models["exported_app"]
    assert (app / "index.html").is_file() and (app / "app.mjs").is_file()
    for key in ("fp32", "int8"):
        assert (app / "models" / web_models[key].name).read_bytes() == web_models[key].read_bytes()


def test_the_export_command_refuses_web_for_a_logits_graph(tmp_path, capsys) -> None:
    from segkit.export.__main__ import main

    status = main(["checkpoint=x.pt", f"output={tmp_path / 'm.onnx'}", f"web={tmp_path / 'app'}"])
    err = capsys.readouterr().err
    assert status == 2 and "needs preprocess=true argmax=true" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "app").exists() and not (tmp_path / "m.onnx").exists()
