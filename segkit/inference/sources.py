"""Frame sources for inference: one image, a folder or glob of images, a video file, a camera, a stream.

Everything that can be checked without running a model is checked when the source is opened, so a
missing path, an empty folder, an unknown extension or an undecodable file fails with a message that
names it before any model is loaded. Frames are handed out as RGB uint8 arrays, the predictor's input.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ts")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class SourceError(ValueError):
    """An input cannot be used; the message names the input and what is wrong with it."""


@dataclass
class Frame:
    """One decoded frame: position in the source, RGB pixels, and a relative name for image outputs."""

    index: int
    rgb: np.ndarray
    name: str
    path: Path | None = None


class FrameSource:
    """Iterable of :class:`Frame`; after iteration, ``stopped_early``/``stop_reason`` tell why it ended."""

    kind: str = ""
    description: str = ""
    total: int | None = None
    fps: float | None = None

    def __init__(self) -> None:
        self.stopped_early = False
        self.stop_reason: str | None = None
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file handle (idempotent)."""

    def _stop(self, reason: str) -> None:
        self.stopped_early = True
        self.stop_reason = reason
        log.warning("input stopped early: %s", reason)


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to RGB uint8 (grey and alpha images become 3-channel); None if undecodable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode also handles non-ASCII paths, unlike imread
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageSource(FrameSource):
    """A sorted list of image files; an undecodable file in a list is skipped and reported, not fatal."""

    kind = "images"

    def __init__(self, files: list[Path], root: Path | None, description: str) -> None:
        super().__init__()
        self.files = files
        self.root = root
        self.description = description
        self.total = len(files)
        self.fps = None
        self._first: np.ndarray | None = None

    def name_of(self, path: Path) -> str:
        """Output name of an input file: its path relative to the input folder (keeps city subfolders)."""
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.name

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            if i == 0 and self._first is not None:
                rgb, self._first = self._first, None
            else:
                rgb = read_image(path)
            if rgb is None:
                log.warning("skipping %s: not a decodable image", path)
                self.skipped.append(str(path))
                continue
            yield Frame(index=i, rgb=rgb, name=self.name_of(path), path=path)


class VideoSource(FrameSource):
    """A video file, camera index or stream URL read with ``cv2.VideoCapture``.

    Reading stops at the end of the input; if a file ends before its declared frame count, or a camera or
    stream stops delivering, ``stopped_early`` is set and ``stop_reason`` says after which frame.
    """

    def __init__(self, target: str | int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.target = target
        self.description = {"camera": f"camera {target}", "stream": f"stream {target}"}.get(kind, str(target))
        self.stem = (
            "camera" if kind == "camera" else ("stream" if kind == "stream" else Path(str(target)).stem)
        )
        cap = cv2.VideoCapture(target) if kind == "camera" else cv2.VideoCapture(str(target), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            what = {
                "camera": f"camera index {target} could not be opened (no such device, or it is busy)",
                "stream": f"stream {target} could not be opened (unreachable, or a protocol FFmpeg lacks)",
            }.get(
                kind,
                f"video file {target} could not be opened (damaged, or a format OpenCV/FFmpeg cannot read)",
            )
            raise SourceError(what)
        ok, bgr = _safe_read(cap)
        if not ok or bgr is None:
            cap.release()
            raise SourceError(f"{self.description} opened but delivered no decodable frame")
        self._cap: cv2.VideoCapture | None = cap
        self._first: np.ndarray | None = bgr
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
        self.total = count if count > 0 else None
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None
        self.size = (int(bgr.shape[1]), int(bgr.shape[0]))  # (W, H), what cv2.VideoWriter wants

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self._cap is not None:
            if self._first is not None:
                ok, bgr, self._first = True, self._first, None
            else:
                ok, bgr = _safe_read(self._cap)
            if not ok or bgr is None:
                self._end(index)
                return
            yield Frame(
                index=index, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name=f"{self.stem}_{index:06d}.png"
            )
            index += 1

    def _end(self, done: int) -> None:
        if self.kind == "video":
            if self.total is not None and done < self.total:
                self._stop(
                    f"could not decode frame {done + 1} of {self.total} in {self.target} "
                    f"(truncated or corrupt file); {done} frames were read"
                )
        else:
            self._stop(f"{self.description} stopped delivering frames after {done} frames (disconnected?)")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _safe_read(cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None]:
    """``cap.read()`` turning a decoder exception into a failed read: a broken frame stops, never crashes."""
    try:
        return cap.read()
    except cv2.error as exc:
        log.warning("decoder error: %s", exc)
        return False, None


def _is_camera(spec: str | int) -> bool:
    if isinstance(spec, bool):
        return False
    if isinstance(spec, int):
        return True
    return spec.strip().isdigit()


def _has_magic(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def _image_files_under(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def _check_readable(files: list[Path]) -> None:
    for path in files:
        if not os.access(path, os.R_OK):
            raise SourceError(f"input file {path} is not readable (permission denied)")


def classify_input(spec: str | int) -> str:
    """What an ``input=`` value denotes: 'camera', 'stream', 'glob', 'folder', 'image' or 'video'.

    Raises :class:`SourceError` for a missing path or an unknown extension, without opening anything.
    """
    if _is_camera(spec):
        return "camera"
    text = str(spec).strip()
    if not text:
        raise SourceError(
            "input is empty: give an image, folder, glob, video file, camera index or stream URL"
        )
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream"
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return "image"
        if suffix in VIDEO_EXTENSIONS:
            return "video"
        raise SourceError(
            f"unknown input extension '{path.suffix or '(none)'}' for {path}: expected an image "
            f"({', '.join(IMAGE_EXTENSIONS)}) or a video ({', '.join(VIDEO_EXTENSIONS)})"
        )
    if _has_magic(text):
        return "glob"
    raise SourceError(f"input not found: {path}")


def open_source(spec: str | int) -> FrameSource:
    """Open ``input=``: validate it fully (existence, extension, non-empty, decodable) and return a source."""
    kind = classify_input(spec)
    if kind == "camera":
        return VideoSource(int(str(spec).strip()), "camera")
    text = str(spec).strip()
    if kind == "stream":
        return VideoSource(text, "stream")
    path = Path(text).expanduser()
    if kind == "video":
        _check_readable([path])
        return VideoSource(str(path), "video")
    if kind == "image":
        _check_readable([path])
        rgb = read_image(path)
        if rgb is None:
            raise SourceError(f"input image {path} could not be decoded (damaged or not really an image)")
        source = ImageSource([path], None, str(path))
        source._first = rgb
        return source
    if kind == "folder":
        files = _image_files_under(path)
        if not files:
            videos = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
            hint = f"; it holds videos ({', '.join(videos[:3])}), pass one as input=" if videos else ""
            raise SourceError(
                f"input folder {path} contains no images (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}){hint}"
            )
        _check_readable(files)
        return ImageSource(files, path, str(path))
    # glob
    matches = sorted(Path(p) for p in _glob.glob(os.path.expanduser(text), recursive=True))
    files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        others = [p.name for p in matches if p.is_file()]
        hint = f" (it matched only non-image files: {', '.join(others[:3])})" if others else ""
        raise SourceError(f"input pattern {text} matches no image files{hint}")
    _check_readable(files)
    root = _glob_root(text)
    return ImageSource(files, root, text)


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: output names are relative to it."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed: list[str] = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")
