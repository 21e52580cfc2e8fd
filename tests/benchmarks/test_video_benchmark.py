"""benchmarks/video.py on a tiny clip: all three measurements run and the report is consistent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import pytest

pytestmark = pytest.mark.slow  # subprocess commands, several processes or export fixtures

ROOT = Path(__file__).resolve().parents[2]


def test_video_benchmark_reports_all_three_modes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("video_benchmark", ROOT / "benchmarks" / "video.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(
        [
            "--frames",
            "12",
            "--height",
            "64",
            "--width",
            "128",
            "--threads",
            "1",
            "--model-frames",
            "6",
            "--workdir",
            str(tmp_path),
        ]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    (result,) = report["results"]
    assert result["frames_written"] == 12 and result["ort_threads"] == 1
    for key in ("model_only_fps", "segkit_fps", "naive_fps"):
        assert result[key] > 0
    assert result["segkit_vs_naive"] == pytest.approx(result["segkit_fps"] / result["naive_fps"], rel=0.01)
    assert result["segkit_vs_model_only"] == pytest.approx(
        result["segkit_fps"] / result["model_only_fps"], rel=0.01
    )
    for name in (
        "clip.mp4",
        "segkit.mp4",
        "naive.mp4",
    ):  # the clip and both pipelines' outputs are full videos
        cap = cv2.VideoCapture(str(tmp_path / name))
        assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 12 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 128
