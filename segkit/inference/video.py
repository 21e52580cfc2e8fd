"""``run_inference``: the library function behind ``infer_seg.py`` (any input -> any output, any back end).

Order of work is deliberate: settings are checked, the input is opened and validated and the output is
planned before the model is loaded, so a typo in a path fails in a second with a message naming it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.inference.overlay import IMAGE_ONLY_MODES, SAVE_MODES
from segkit.inference.pipeline import PredictorLike, format_summary, process_frames
from segkit.inference.sinks import (
    IMAGE_OUTPUT_EXTENSIONS,
    VIDEO_OUTPUT_EXTENSIONS,
    FrameSink,
    ImageSink,
    LabelIdSink,
    SinkError,
    VideoSink,
    is_video_path,
)
from segkit.inference.smoothing import build_smoother
from segkit.inference.sources import FrameSource, ImageSource, SourceError, open_source

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
__all__ = [
    "InferenceJob",
    "SinkError",
    "SourceError",
    "format_summary",
    "plan_output",
    "prepare_inference",
    "run_inference",
]


def default_output(source: FrameSource, save: str, as_video: bool) -> Path:
    """Where results go when ``output=`` is not given: ``outputs/infer/<input name>_<save>[.mp4]``."""
    if isinstance(source, ImageSource):
        stem = source.root.name if source.root is not None else source.files[0].stem
    else:
        stem = getattr(source, "stem", source.kind)
    base = Path("outputs") / "infer" / f"{stem}_{save}"
    video_in = source.kind in ("video", "camera", "stream")
    if save not in IMAGE_ONLY_MODES and (as_video or video_in):
        return base.with_suffix(".mp4")
    if isinstance(source, ImageSource) and len(source.files) == 1 and not as_video:
        return base.with_suffix(".png")
    return base


def plan_output(
    source: FrameSource,
    output: str | os.PathLike | None,
    save: str,
    *,
    as_video: bool = False,
) -> tuple[str, Path]:
    """Decide the kind of output ('video', 'image' = one file, 'folder') and its path, or raise SinkError."""
    if save not in SAVE_MODES:
        raise SinkError(f"unknown save='{save}': expected one of {', '.join(SAVE_MODES)}")
    path = Path(output).expanduser() if output not in (None, "") else default_output(source, save, as_video)
    suffix = path.suffix.lower()
    if as_video or is_video_path(path):
        if not is_video_path(path):
            raise SinkError(
                f"as_video=true needs output= to end in {', '.join(VIDEO_OUTPUT_EXTENSIONS)}, got {path}"
            )
        if save in IMAGE_ONLY_MODES:
            raise SinkError(
                f"save={save} writes exact class ids, which a lossy video codec would alter: "
                f"give a folder as output= instead of {path}"
            )
        if path.is_dir():
            raise SinkError(f"output {path} is a folder, but a video file is to be written there")
        return "video", path
    if suffix in IMAGE_OUTPUT_EXTENSIONS and not path.is_dir():
        single = isinstance(source, ImageSource) and len(source.files) == 1
        if not single:
            raise SinkError(
                f"output {path} is one image file, but the input {source.description} has several frames: "
                "give a folder, or a video file (.mp4) with as_video=true"
            )
        if save == "labelIds":
            return "folder", path.parent
        return "image", path
    if path.exists() and not path.is_dir():
        raise SinkError(f"output {path} exists and is a file, but a folder of images is to be written there")
    return "folder", path


def _make_sink(kind: str, path: Path, save: str, palette: Any, alpha: float, fps: float) -> FrameSink:
    if save == "labelIds":
        return LabelIdSink(path, palette)
    if kind == "video":
        return VideoSink(path, save, palette, alpha, fps)
    return ImageSink(path, save, palette, alpha, single_file=(kind == "image"))


def _summary_path(kind: str, path: Path) -> Path:
    return path / "summary.json" if kind == "folder" else path.with_name(path.stem + ".summary.json")


@dataclass
class InferenceJob:
    """A validated, opened, ready run: the input, the loaded model and the output. ``run()`` does the work."""

    predictor: PredictorLike
    source: FrameSource
    sink: FrameSink
    output_kind: str
    output: Path
    checkpoint: str | None
    device: str
    video_fps: float
    options: dict[str, Any] = field(default_factory=dict)
    summary_json: bool = True

    def run(self) -> dict[str, Any]:
        """Process every frame (threaded pipeline), write the summary JSON if asked, return the summary."""
        log.info("segmenting %s -> %s (save=%s)", self.source.description, self.output, self.sink.save)
        summary = process_frames(self.predictor, self.source, self.sink, **self.options)
        summary["checkpoint"] = self.checkpoint
        summary["backend"] = getattr(self.predictor, "backend", None)
        summary["device"] = self.device
        if self.output_kind == "video":
            summary["video_fps"] = self.video_fps
        if self.summary_json:
            target = _summary_path(self.output_kind, self.output)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(summary, indent=2) + "\n")
            summary["summary_json"] = str(target)
        return summary

    def close(self) -> None:
        """Release the input without running (a job that is prepared but not wanted)."""
        self.source.close()


def prepare_inference(
    checkpoint: str | os.PathLike | None,
    input: str | int,  # noqa: A002 - the CLI key is 'input'
    output: str | os.PathLike | None = None,
    *,
    save: str = "overlay",
    alpha: float = 0.5,
    as_video: bool = False,
    fps: float | None = None,
    input_size: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    show: bool = False,
    smoothing: Any = None,
    smoothing_alpha: float | None = None,
    queue_size: int = 8,
    max_frames: int | None = None,
    progress: bool = True,
    summary_json: bool = True,
    predictor: PredictorLike | None = None,
) -> InferenceJob:
    """Check the settings, open and validate the input, plan the output, then load the model.

    Every error a user can cause is raised here, before any frame is processed (and input/output
    errors before the model is loaded). Arguments as for :func:`run_inference`.
    """
    # 1. settings that need nothing opened
    if save not in SAVE_MODES:
        raise ValueError(f"unknown save='{save}': expected one of {', '.join(SAVE_MODES)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(queue_size) < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1 or null, got {max_frames}")
    if fps is not None and float(fps) <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if input_size is not None and (len(input_size) != 2 or min(int(v) for v in input_size) < 1):
        raise ValueError(f"input_size must be [height, width] of positive ints, got {list(input_size)}")
    smoother = build_smoother(smoothing, smoothing_alpha)
    if predictor is None:
        if checkpoint in (None, ""):
            raise ValueError("checkpoint= is required: a segkit .pt checkpoint or an exported .onnx model")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")

    # 2. the input, fully validated; 3. the output plan
    source = open_source(input)
    try:
        kind, out_path = plan_output(source, output, save, as_video=as_video)
        video_fps = float(fps) if fps is not None else (source.fps or DEFAULT_FPS)

        # 4. only now the model
        if predictor is None:
            from segkit.inference.predictor import Predictor  # torch & co. load only after the checks

            predictor = Predictor.from_file(
                checkpoint,
                device=device,
                threads=threads,
                input_size=list(input_size) if input_size is not None else None,
            )
        sink = _make_sink(kind, out_path, save, predictor.palette, float(alpha), video_fps)
    except BaseException:
        source.close()
        raise
    options = {
        "batch_size": int(batch_size),
        "smoother": smoother,
        "queue_size": int(queue_size),
        "max_frames": int(max_frames) if max_frames is not None else None,
        "show": bool(show),
        "progress": bool(progress),
    }
    return InferenceJob(
        predictor=predictor,
        source=source,
        sink=sink,
        output_kind=kind,
        output=out_path,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        device=device,
        video_fps=video_fps,
        options=options,
        summary_json=summary_json,
    )


def run_inference(
    checkpoint: str | os.PathLike | None,
    input: str | int,  # noqa: A002 - the CLI key is 'input'
    output: str | os.PathLike | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Segment each frame of ``input`` with the model in ``checkpoint``, write ``output``, return the summary.

    ``input``: an image, a folder (searched recursively, sorted), a glob, a video file, a camera index
    or a stream URL. ``output``: a video file (.mp4 ...), one image file, or a folder (PNG per frame,
    named like the inputs); None: ``outputs/infer/<input>_<save>``. Keyword settings (conf/infer.yaml):
    ``save`` overlay | side_by_side | mask | labelIds | color, ``alpha``, ``as_video``, ``fps`` (output
    video rate; default the input video's, else 30), ``input_size``, ``batch_size``, ``device``,
    ``threads``, ``show``, ``smoothing``, ``smoothing_alpha``, ``queue_size``, ``max_frames``,
    ``progress``, ``summary_json``; ``predictor`` may replace ``checkpoint`` (tests, benchmarks).
    Setting, input and output errors are raised before any work (see :func:`prepare_inference`).
    """
    return prepare_inference(checkpoint, input, output, **settings).run()
