"""Input handling of inference: every kind of input, and a clear error for each bad one, before any model."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkit.inference.sources import ImageSource, SourceError, VideoSource, classify_input, open_source


def write_video(
    path: Path, frames: int = 12, size: tuple[int, int] = (64, 128), fps: float = 10.0, fourcc: str = "mp4v"
) -> list[np.ndarray]:
    """A small clip with a moving bright bar; returns the RGB frames that were encoded."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    out = []
    for i in range(frames):
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        rgb[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        rgb[:, (i * 7) % w : (i * 7) % w + 12] = (40, 220, 90)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        out.append(rgb)
    writer.release()
    return out


def count_readable_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_folder_is_searched_recursively_sorted_with_relative_names(tmp_path: Path) -> None:
    for rel in ["b/z_1.png", "a/y_2.png", "a/x_3.jpg", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not an image")
        else:
            assert cv2.imwrite(str(tmp_path / rel), np.full((8, 10, 3), 100, np.uint8))
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageSource) and source.total == 3
    frames = list(source)
    assert [f.name for f in frames] == ["a/x_3.jpg", "a/y_2.png", "b/z_1.png"]
    assert frames[0].rgb.shape == (8, 10, 3) and frames[0].rgb.dtype == np.uint8


def test_glob_keeps_names_relative_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    for name in ["c/one.png", "c/two.png", "c/skip.jpg"]:
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4, 3), np.uint8))
    source = open_source(str(tmp_path / "*" / "*.png"))
    assert [f.name for f in source] == ["c/one.png", "c/two.png"]
    assert classify_input(str(tmp_path / "*.png")) == "glob"


def test_single_image_keeps_its_rgb_order(tmp_path: Path) -> None:
    bgr = np.zeros((6, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    (frame,) = list(open_source(str(tmp_path / "red.png")))
    assert frame.name == "red.png"
    np.testing.assert_array_equal(frame.rgb[0, 0], [255, 0, 0])


def test_video_source_reports_count_fps_size_and_frames(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", frames=9, fps=12.0)
    source = open_source(str(tmp_path / "clip.mp4"))
    assert isinstance(source, VideoSource)
    assert (source.kind, source.total, source.fps, source.size) == ("video", 9, 12.0, (128, 64))
    frames = list(source)
    assert [f.index for f in frames] == list(range(9))
    assert frames[3].name == "clip_000003.png"
    assert not source.stopped_early
    source.close()


def test_truncated_video_stops_early_with_the_frame_named(tmp_path: Path) -> None:
    full = tmp_path / "full.avi"
    write_video(full, frames=20, fourcc="MJPG")
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    readable = count_readable_frames(cut)
    assert 0 < readable < 20
    source = open_source(str(cut))
    assert len(list(source)) == readable
    assert source.stopped_early
    assert f"frame {readable + 1} of 20" in source.stop_reason and "truncated" in source.stop_reason


def test_camera_that_stops_delivering_is_reported(tmp_path: Path) -> None:
    # A capture that ends is what a camera looks like when it is unplugged: reads start failing.
    write_video(tmp_path / "cam.mp4", frames=5)
    source = VideoSource(str(tmp_path / "cam.mp4"), "camera")
    assert source.total is None  # cameras have no length
    assert len(list(source)) == 5
    assert source.stopped_early and "stopped delivering frames after 5 frames" in source.stop_reason


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"input not found: .*nope\.mp4"):
        open_source(str(tmp_path / "nope.mp4"))


def test_empty_folder_and_folder_with_only_videos(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="contains no images"):
        open_source(str(tmp_path))
    write_video(tmp_path / "only.mp4", frames=2)
    with pytest.raises(SourceError, match=r"holds videos \(only\.mp4\)"):
        open_source(str(tmp_path))


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(SourceError, match=r"unknown input extension '\.csv' for .*data\.csv"):
        open_source(str(tmp_path / "data.csv"))


def test_unreadable_image_and_video(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SourceError, match=r"broken\.png could not be decoded"):
        open_source(str(tmp_path / "broken.png"))
    (tmp_path / "broken.mp4").write_bytes(os.urandom(2048))
    with pytest.raises(SourceError, match=r"broken\.mp4"):
        open_source(str(tmp_path / "broken.mp4"))


def test_glob_without_images(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(
        SourceError, match=r"matches no image files \(it matched only non-image files: a\.txt\)"
    ):
        open_source(str(tmp_path / "*"))


def test_undecodable_file_inside_a_folder_is_skipped_and_reported(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((4, 4, 3), np.uint8))
    source = open_source(str(tmp_path))
    assert [f.name for f in source] == ["a.png", "c.png"]
    assert source.skipped == [str(tmp_path / "b.png")]


def test_camera_index_that_does_not_exist() -> None:
    assert classify_input(7) == "camera" and classify_input("3") == "camera"
    with pytest.raises(SourceError, match="camera index 97 could not be opened"):
        open_source(97)
