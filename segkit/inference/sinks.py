"""Where predictions go: a video file, a folder of PNGs named after the inputs, or benchmark label PNGs.

A sink renders what ``save=`` asks for from (frame, mask) and writes it. ``close()`` always releases the
video writer, so a run that stops early still leaves a valid, playable file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from segkit.inference.overlay import IMAGE_ONLY_MODES, SAVE_MODES, render
from segkit.inference.sources import Frame

log = logging.getLogger(__name__)

#: Containers cv2.VideoWriter can fill with the 'mp4v' (MPEG-4 part 2) codec.
VIDEO_OUTPUT_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
IMAGE_OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FOURCC = "mp4v"


class SinkError(ValueError):
    """An output cannot be written; the message names the path and the reason."""


class FrameSink:
    """Base class: ``write(frame, mask)`` for each frame in order, then ``close()``."""

    def __init__(self, path: Path, save: str, palette: np.ndarray, alpha: float) -> None:
        if save not in SAVE_MODES:
            raise SinkError(f"unknown save='{save}': expected one of {', '.join(SAVE_MODES)}")
        self.path = Path(path)
        self.save = save
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.alpha = float(alpha)
        self.written = 0

    def render(self, frame: Frame, mask: np.ndarray) -> np.ndarray:
        """The image this sink writes for one frame (RGB, or class ids for save=mask)."""
        return render(self.save, frame.rgb, mask, self.palette, self.alpha)

    def write(self, frame: Frame, mask: np.ndarray) -> np.ndarray | None:  # pragma: no cover - abstract
        """Write one frame; returns the rendered RGB image when there is one (for a live window)."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (idempotent)."""


class VideoSink(FrameSink):
    """Frames into one video (fourcc ``mp4v``), opened at the first frame with that frame's size.

    Later frames of another size (a folder of mixed images) are resized to the first one, because a
    video has one size. MPEG-4 needs even sizes: the encoder drops a last odd row/column.
    """

    def __init__(self, path: Path, save: str, palette: np.ndarray, alpha: float, fps: float) -> None:
        super().__init__(path, save, palette, alpha)
        if save in IMAGE_ONLY_MODES:
            raise SinkError(
                f"save={save} writes exact class ids, which a lossy video codec would alter: "
                f"give a folder as output= instead of {self.path}"
            )
        if self.path.suffix.lower() not in VIDEO_OUTPUT_EXTENSIONS:
            raise SinkError(f"video output {self.path} needs one of {', '.join(VIDEO_OUTPUT_EXTENSIONS)}")
        if not fps or fps <= 0:
            raise SinkError(f"video output {self.path} needs a positive fps, got {fps}")
        self.fps = float(fps)
        self.size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*FOURCC), self.fps, (width, height))
        if not writer.isOpened():
            raise SinkError(
                f"cannot write video {self.path} (fourcc {FOURCC}, {width}x{height} at {self.fps} fps)"
            )
        self._writer = writer
        self.size = (width, height)

    def write(self, frame: Frame, mask: np.ndarray) -> np.ndarray:
        image = self.render(frame, mask)
        if self._writer is None:
            self._open(image.shape[1], image.shape[0])
        assert self.size is not None and self._writer is not None
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.written += 1
        return image

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix or ".png", data)
    if not ok:
        raise SinkError(f"cannot encode {path}")
    try:
        encoded.tofile(path)
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc}") from None


class ImageSink(FrameSink):
    """One PNG per frame, named like its input (``<relative input path>.png``) under ``path``.

    With ``single_file=True`` ``path`` itself is the file (one image in, one image out).
    """

    def __init__(
        self, path: Path, save: str, palette: np.ndarray, alpha: float, single_file: bool = False
    ) -> None:
        super().__init__(path, save, palette, alpha)
        if save == "labelIds":
            raise SinkError("save=labelIds is written by LabelIdSink")
        self.single_file = single_file
        if single_file:
            suffix = self.path.suffix.lower()
            if suffix not in IMAGE_OUTPUT_EXTENSIONS:
                raise SinkError(f"image output {self.path} needs one of {', '.join(IMAGE_OUTPUT_EXTENSIONS)}")
            if save == "mask" and suffix != ".png":
                raise SinkError(f"save=mask needs a lossless .png output, got {self.path}")

    def target(self, frame: Frame) -> Path:
        """The file a frame goes to."""
        return self.path if self.single_file else (self.path / frame.name).with_suffix(".png")

    def write(self, frame: Frame, mask: np.ndarray) -> np.ndarray | None:
        image = self.render(frame, mask)
        _write_image(self.target(frame), image)
        self.written += 1
        return image if image.ndim == 3 else None


class LabelIdSink(FrameSink):
    """Official label-id PNGs: ``segkit.evaluation.save_benchmark_pngs`` for Cityscapes-named inputs.

    Files go to the subfolder mirroring the input's (e.g. ``<out>/frankfurt/``), named as the benchmark
    server expects. Inputs without a Cityscapes name (video frames, other photos) get the same label-id
    PNG under the input's own name, since the server naming does not apply to them.
    """

    def __init__(self, path: Path, palette: np.ndarray, save_fn: Callable[..., object] | None = None) -> None:
        super().__init__(path, "labelIds", palette, 0.0)
        if save_fn is None:
            from segkit.evaluation import save_benchmark_pngs

            save_fn = save_benchmark_pngs
        self._save_fn = save_fn
        self._warned = False

    def write(self, frame: Frame, mask: np.ndarray) -> None:
        from segkit.evaluation.benchmark_png import benchmark_name
        from segkit.labels import train_ids_to_label_ids

        name = Path(frame.name)
        out_dir = self.path / name.parent
        mask = np.asarray(mask, dtype=np.uint8)
        try:
            benchmark_name(name)
        except ValueError:
            if not self._warned:
                log.info("%s is not a Cityscapes file name: label-id PNGs keep the input names", name.name)
                self._warned = True
            _write_image((self.path / name).with_suffix(".png"), train_ids_to_label_ids(mask))
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._save_fn(mask, frame.path if frame.path is not None else name, out_dir)
        self.written += 1
        return None


def is_video_path(path: str | Path) -> bool:
    """Whether an ``output=`` value names a video file (by extension)."""
    return Path(path).suffix.lower() in VIDEO_OUTPUT_EXTENSIONS
