"""``infer_seg.py`` as users run it: Hydra overrides in, files and a printed summary out, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import segkit
from segkit import labels
from segkit.config import load_group
from segkit.engine.checkpoint import model_metadata, save_checkpoint

pytestmark = pytest.mark.slow  # subprocess commands, several processes or export fixtures

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lraspp_mobilenetv3_small"


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "infer_seg.py"), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def car_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose classifiers are zero with a one-hot 'car' bias: it predicts car everywhere."""
    model = segkit.create_model(MODEL)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 19]
    with torch.no_grad():
        for head in heads:
            head.weight.zero_()
            head.bias.zero_()
        heads[-1].bias[labels.CLASS_NAMES.index("car")] = 10.0
    path = tmp_path_factory.mktemp("cli") / "car.pt"
    return save_checkpoint(path, {**model_metadata(load_group("model", MODEL)), "model": model.state_dict()})


def test_cli_folder_of_city_subfolders_to_overlays(tmp_path: Path, sample_root: Path, car_ckpt: Path) -> None:
    val = sample_root / "leftImg8bit" / "val"
    out = tmp_path / "overlays"
    proc = run_cli(
        f"checkpoint={car_ckpt}",
        f"input={val}",
        f"output={out}",
        "save=overlay",
        "alpha=0.25",
        "input_size=[64,128]",
        "smoothing={kind:ema,alpha:0.3}",
        "threads=1",
        "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"output      : {out}" in proc.stdout and "stopped early: no" in proc.stdout
    inputs = sorted(val.rglob("*.png"))
    for path in inputs:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float64)
        got = cv2.cvtColor(cv2.imread(str(out / path.relative_to(val))), cv2.COLOR_BGR2RGB)
        expected = 0.25 * labels.PALETTE[labels.CLASS_NAMES.index("car")] + 0.75 * rgb
        assert np.abs(got - expected).max() <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == len(inputs) and summary["smoothing"] == "EmaSmoother(alpha=0.3)"
    assert not (tmp_path / "outputs").exists()  # Hydra writes no run folder for inference


def test_cli_bad_input_exits_2_naming_it_before_loading_the_model(tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a model")
    proc = run_cli(f"checkpoint={junk}", f"input={tmp_path / 'nowhere.mp4'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"input not found: {tmp_path / 'nowhere.mp4'}" in proc.stdout + proc.stderr
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 64, 3), np.uint8))
    proc = run_cli(
        f"checkpoint={junk}", f"input={tmp_path / 'a.png'}", f"output={tmp_path / 'o'}", cwd=tmp_path
    )
    assert proc.returncode == 2 and str(junk) in proc.stdout + proc.stderr  # a broken model file, named
    assert not (tmp_path / "o").exists()
    proc = run_cli(f"input={tmp_path / 'a.png'}", cwd=tmp_path)
    assert proc.returncode == 2 and "checkpoint= is required" in proc.stdout + proc.stderr


def test_cli_ctrl_c_exits_130_with_a_playable_video(tmp_path: Path, car_ckpt: Path) -> None:
    clip = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (128, 64))
    for i in range(1500):  # far longer than the time to the interrupt
        writer.write(np.full((64, 128, 3), i % 256, np.uint8))
    writer.release()
    out = tmp_path / "out.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "infer_seg.py"),
            f"checkpoint={car_ckpt}",
            f"input={clip}",
            f"output={out}",
            "threads=1",
            "queue_size=2",
            "progress=false",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        not (out.exists() and out.stat().st_size > 0) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)  # the writer opens the file at the first finished frame
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "stopped early: interrupted by the user (Ctrl-C)" in stdout
    done = json.loads((tmp_path / "out.summary.json").read_text())["frames"]
    cap = cv2.VideoCapture(str(out))
    readable = 0
    while cap.read()[0]:
        readable += 1
    assert 0 < done < 1500 and readable == done
