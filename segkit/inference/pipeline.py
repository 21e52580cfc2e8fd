"""The threaded frame pipeline: a reader thread, the model in the calling thread, a writer thread.

Decoding, inference and encoding overlap; bounded queues between the three keep memory flat on long
videos. The model runs in the calling (main) thread so Ctrl-C lands there: any stop - Ctrl-C, a broken
frame, a camera that disappears, an error - ends the same way: the reader is told to stop, frames already
predicted are written, both threads are joined and the video writer is released, so the output file is
valid. The returned summary says how far it got and why it stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from segkit.inference.sinks import FrameSink
from segkit.inference.smoothing import EmaSmoother
from segkit.inference.sources import Frame, FrameSource

log = logging.getLogger(__name__)

_END = object()
_POLL_S = 0.1


class PredictorLike(Protocol):
    """The part of ``segkit.inference.Predictor`` the pipeline uses."""

    palette: np.ndarray

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def probabilities(self, rgb: np.ndarray) -> np.ndarray: ...

    def mask_from_probabilities(self, probs: np.ndarray, size: tuple[int, int]) -> np.ndarray: ...


def _logits_fn(predictor: Any) -> Any:
    """The predictor's ``logits`` method when it returns scores (not an in-graph argmax mask), else None."""
    fn = getattr(predictor, "logits", None)
    info = getattr(predictor, "info", None)
    if fn is None or info is None or getattr(info, "output_kind", None) != "logits":
        return None
    return fn


def gui_available() -> tuple[bool, str]:
    """Whether ``show=true`` can open a window here, and if not, why (headless OpenCV, no display)."""
    import cv2

    info = cv2.getBuildInformation()
    gui_line = next((ln for ln in info.splitlines() if ln.strip().startswith("GUI:")), "")
    if gui_line and gui_line.split(":", 1)[1].strip().upper() == "NONE":
        return False, (
            "this OpenCV build has no GUI support (opencv-python-headless); for a window, replace it "
            "with opencv-python (uninstall the headless one first: two OpenCV builds break each other)"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return (
            False,
            "no display: neither DISPLAY nor WAYLAND_DISPLAY is set (headless session or SSH without -X)",
        )
    try:
        cv2.namedWindow("segkit", cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        return False, f"OpenCV could not open a window ({str(exc).strip().splitlines()[-1]})"
    return True, ""


class _Window:
    """A live preview fed from the writer thread; drawn from the main thread (GUI toolkits want that)."""

    def __init__(self, name: str = "segkit") -> None:
        self.name = name
        self.latest: queue.Queue[np.ndarray] = queue.Queue(maxsize=1)

    def offer(self, image: np.ndarray | None) -> None:
        if image is None:
            return
        try:
            self.latest.put_nowait(image)
        except queue.Full:  # the window is slower than the pipeline: drop, never block the writer
            pass

    def refresh(self) -> bool:
        """Draw the newest frame; False when the user pressed q or Esc."""
        import cv2

        try:
            image = self.latest.get_nowait()
            cv2.imshow(self.name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        except queue.Empty:
            pass
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.name)
        except cv2.error:
            pass


def _put(q: queue.Queue, item: Any, give_up: threading.Event) -> bool:
    """Put with a bounded wait that gives up when ``give_up`` is set (the consumer has gone)."""
    while True:
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            if give_up.is_set():
                return False


def process_frames(
    predictor: PredictorLike,
    source: FrameSource,
    sink: FrameSink,
    *,
    batch_size: int = 1,
    smoother: EmaSmoother | None = None,
    queue_size: int = 8,
    max_frames: int | None = None,
    show: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``predictor`` over every frame of ``source`` into ``sink``; return the run's summary dict.

    Keys: frames (written), total_frames, batch_size, model_calls, latency_ms_mean / latency_ms_p95 (one
    model step = one batch), model_fps, fps (end to end), wall_s, stopped_early, stop_reason, skipped,
    mask_step (where scores become the mask: in the model step, or overlapped in the writer thread).
    Predictor or sink errors are raised after the clean shutdown; Ctrl-C is not raised, it is reported.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if queue_size < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or null, got {max_frames}")
    if smoother is not None and batch_size > 1:
        log.info(
            "smoothing feeds frames through the model one at a time; batch_size=%d is not used", batch_size
        )
        batch_size = 1

    window: _Window | None = None
    show_note = None
    if show:
        ok, why = gui_available()
        if ok:
            window = _Window()
        else:
            show_note = f"show=true ignored: {why}"
            log.warning(show_note)

    # With one frame per call, the network runs here and the scores -> mask step (upsampling + argmax,
    # as costly as a small network at 512x1024) runs in the writer thread, overlapping the next frame.
    logits_fn = _logits_fn(predictor) if smoother is None and batch_size == 1 else None
    in_q: queue.Queue = queue.Queue(maxsize=queue_size)
    # score maps are C x h x w float32 (40 MB at 19 x 512 x 1024): keep few of them in flight
    out_q: queue.Queue = queue.Queue(maxsize=min(queue_size, 2) if logits_fn is not None else queue_size)
    stop_reading = threading.Event()
    writer_gone = threading.Event()
    errors: dict[str, BaseException] = {}
    limit_hit = threading.Event()

    def read() -> None:
        try:
            for n, frame in enumerate(source, start=1):
                if stop_reading.is_set() or not _put(in_q, frame, stop_reading):
                    return
                if max_frames is not None and n >= max_frames:
                    if source.total is None or source.total > max_frames:
                        limit_hit.set()
                    return
        except BaseException as exc:  # a decoder crash ends the input like a broken frame
            errors["reader"] = exc
        finally:
            _put(in_q, _END, stop_reading)

    def write() -> None:
        try:
            while True:
                item = out_q.get()
                if item is _END:
                    return
                frame, mask = item
                if logits_fn is not None:
                    mask = predictor.mask_from_probabilities(mask, frame.rgb.shape[:2])
                image = sink.write(frame, mask)
                if window is not None:
                    window.offer(image)
        except BaseException as exc:
            errors["writer"] = exc
        finally:
            writer_gone.set()
            sink.close()  # releases the VideoWriter: the file is valid whatever happened before

    total = source.total if max_frames is None else min(source.total or max_frames, max_frames)
    reader = threading.Thread(target=read, name="segkit-reader", daemon=True)
    writer = threading.Thread(target=write, name="segkit-writer", daemon=False)
    bar = tqdm(total=total, unit="frame", desc="segkit", disable=not progress, dynamic_ncols=True, leave=True)
    latencies: list[float] = []
    predicted = 0
    stop_reason: str | None = None
    failure: BaseException | None = None
    start = time.perf_counter()
    reader.start()
    writer.start()
    try:
        ended = False
        while not ended:
            batch: list[Frame] = []
            while len(batch) < batch_size:
                try:
                    item = in_q.get(timeout=_POLL_S)
                except queue.Empty:
                    if writer_gone.is_set():
                        break
                    continue
                if item is _END:
                    ended = True
                    break
                batch.append(item)
            if writer_gone.is_set():
                break
            if not batch:
                continue
            t0 = time.perf_counter()
            if smoother is not None:
                masks = []
                for frame in batch:
                    probs = smoother(predictor.probabilities(frame.rgb))
                    masks.append(predictor.mask_from_probabilities(probs, frame.rgb.shape[:2]))
            elif logits_fn is not None:
                masks = [logits_fn(batch[0].rgb)]  # scores; the writer makes the mask
            else:
                masks = list(predictor.predict_batch([frame.rgb for frame in batch]))
            latencies.append(time.perf_counter() - t0)
            for frame, mask in zip(batch, masks):
                if not _put(out_q, (frame, mask), writer_gone):
                    break
            predicted += len(batch)
            bar.update(len(batch))
            if len(latencies) % 10 == 1:
                bar.set_postfix_str(f"model {1000 * latencies[-1] / len(batch):.1f} ms/frame", refresh=False)
            if window is not None and not window.refresh():
                stop_reason = "stopped by the user (q pressed in the preview window)"
                break
    except KeyboardInterrupt:
        stop_reason = f"interrupted by the user (Ctrl-C) after {predicted} frames"
        log.warning(stop_reason)
    except BaseException as exc:
        failure = exc
        stop_reason = f"model step failed after {predicted} frames: {type(exc).__name__}: {exc}"
    finally:
        stop_reading.set()
        _put(out_q, _END, writer_gone)
        writer.join()
        reader.join(timeout=10.0)
        if reader.is_alive():  # stuck in a device read: releasing the capture under it could crash
            log.warning("the input reader did not stop within 10 s; leaving %s open", source.description)
        else:
            source.close()
        bar.close()
        if window is not None:
            window.close()
    wall = time.perf_counter() - start

    if "writer" in errors:
        raise errors["writer"]
    if failure is not None:
        raise failure
    if stop_reason is None and "reader" in errors:
        exc = errors["reader"]
        stop_reason = f"reading the input failed after {predicted} frames: {type(exc).__name__}: {exc}"
    if stop_reason is None and source.stopped_early:
        stop_reason = source.stop_reason
    if stop_reason is None and limit_hit.is_set():
        stop_reason = f"max_frames={max_frames} reached"

    lat_ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    model_s = float(np.sum(latencies)) if latencies else 0.0
    summary: dict[str, Any] = {
        "input": source.description,
        "input_kind": source.kind,
        "output": str(sink.path),
        "save": sink.save,
        "frames": sink.written,
        "total_frames": source.total,
        "skipped": list(source.skipped),
        "batch_size": batch_size,
        "model_calls": len(latencies),
        "latency_ms_mean": round(float(lat_ms.mean()), 3) if lat_ms.size else None,
        "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 3) if lat_ms.size else None,
        "model_fps": round(predicted / model_s, 3) if model_s > 0 else None,
        "fps": round(sink.written / wall, 3) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "stopped_early": stop_reason is not None,
        "stop_reason": stop_reason,
        "smoothing": repr(smoother) if smoother is not None else None,
        "mask_step": "writer thread" if logits_fn is not None else "model step",
    }
    if show_note:
        summary["show"] = show_note
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of a run, printed at the end of ``infer_seg.py``."""
    lines = [
        f"frames      : {summary['frames']}"
        + (f" of {summary['total_frames']}" if summary.get("total_frames") else ""),
        f"model step  : mean {summary['latency_ms_mean']} ms, p95 {summary['latency_ms_p95']} ms "
        f"(batch {summary['batch_size']}), {summary['model_fps']} frames/s",
        f"end to end  : {summary['fps']} frames/s in {summary['wall_s']} s",
        f"output      : {summary['output']}",
    ]
    if summary.get("skipped"):
        lines.append(
            f"skipped     : {len(summary['skipped'])} undecodable file(s): "
            + ", ".join(summary["skipped"][:3])
        )
    if summary.get("stopped_early"):
        lines.append(f"stopped early: {summary['stop_reason']}")
    else:
        lines.append("stopped early: no (whole input processed)")
    if summary.get("show"):
        lines.append(summary["show"])
    return "\n".join(lines)
