"""The threaded video pipeline end to end with real (tiny, untrained) segkit models on generated clips."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import segkit
from segkit import labels
from segkit.config import load_group
from segkit.engine.checkpoint import model_metadata, save_checkpoint
from segkit.inference import Predictor
from segkit.inference.pipeline import process_frames
from segkit.inference.sinks import SinkError, VideoSink
from segkit.inference.sources import FrameSource, SourceError, open_source
from segkit.inference.video import run_inference

MODEL = "lraspp_mobilenetv3_small"
CAR = labels.CLASS_NAMES.index("car")


def make_checkpoint(path: Path, constant_class: int | None = None) -> Path:
    """A real segkit checkpoint whose prediction is known or at least varied, without any training.

    The LR-ASPP output is the sum of two 1x1 classifiers. With ``constant_class`` their weights are zero
    and one bias is one-hot, so every pixel gets that class. Otherwise their weights are redrawn with a
    spread large enough that an untrained model's prediction varies across (and with) the image.
    """
    model = segkit.create_model(MODEL)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 19]
    assert len(heads) == 2
    with torch.no_grad():
        for head in heads:
            head.bias.zero_()
            if constant_class is None:
                head.weight.normal_(0.0, 0.01)
            else:
                head.weight.zero_()
        if constant_class is not None:
            heads[-1].bias[constant_class] = 10.0
    save_checkpoint(path, {**model_metadata(load_group("model", MODEL)), "model": model.state_dict()})
    return path


def through_codec(frames: list[np.ndarray], path: Path, fps: float = 10.0) -> list[np.ndarray]:
    """RGB frames as they come back from an mp4v file: the reference for a pipeline's video output."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return read_video(path)[0]


def write_video(
    path: Path,
    frames: int = 12,
    size: tuple[int, int] = (64, 128),
    fps: float = 10.0,
    fourcc: str = "mp4v",
    flat: bool = False,
    seed: int = 0,
) -> list[np.ndarray]:
    """A small clip (moving bar over a gradient, or flat grey); returns the RGB frames encoded."""
    h, w = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    out = []
    for i in range(frames):
        if flat:
            rgb = np.full((h, w, 3), 120, dtype=np.uint8)
        else:
            rgb = np.zeros((h, w, 3), dtype=np.uint8)
            rgb[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
            rgb[..., 1] = rng.integers(0, 60, (h, w), dtype=np.uint8)
            rgb[:, (i * 7) % w : (i * 7) % w + 12] = (40, 220, 90)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        out.append(rgb)
    writer.release()
    return out


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} is not a readable video"
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "random.pt")


@pytest.fixture(scope="module")
def predictor(ckpt: Path) -> Predictor:
    return Predictor.from_file(ckpt, threads=1)


@pytest.fixture(scope="module")
def car_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_file(make_checkpoint(tmp_path_factory.mktemp("car") / "car.pt", CAR), threads=1)


class Interrupting:
    """A predictor whose model step raises KeyboardInterrupt on call ``k + 1``, as Ctrl-C would."""

    def __init__(self, inner: Predictor, k: int) -> None:
        self.inner, self.k, self.calls = inner, k, 0
        self.palette = inner.palette

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if self.calls > self.k:
            raise KeyboardInterrupt
        return self.inner.predict_batch(images)


def test_video_in_video_out_keeps_frame_count_size_and_fps(tmp_path: Path, predictor: Predictor) -> None:
    write_video(tmp_path / "in.mp4", frames=14, fps=12.0)
    summary = run_inference(
        None, str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), predictor=predictor, progress=False
    )
    frames, fps = read_video(tmp_path / "out.mp4")
    assert len(frames) == 14 and frames[0].shape == (64, 128, 3) and fps == pytest.approx(12.0)
    assert summary["frames"] == 14 and summary["total_frames"] == 14 and not summary["stopped_early"]
    assert summary["model_calls"] == 14 and summary["latency_ms_p95"] >= summary["latency_ms_mean"] * 0.5 > 0
    assert json.loads((tmp_path / "out.summary.json").read_text())["frames"] == 14


def test_overlay_png_colour_is_alpha_palette_plus_rest_frame(
    tmp_path: Path, car_predictor: Predictor
) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "street.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    run_inference(
        None,
        str(tmp_path / "street.png"),
        str(tmp_path / "out" / "street.png"),
        alpha=0.4,
        predictor=car_predictor,
        progress=False,
    )
    out = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "street.png")), cv2.COLOR_BGR2RGB)
    expected = 0.4 * labels.PALETTE[CAR].astype(np.float64) + 0.6 * rgb.astype(np.float64)
    assert np.abs(out - expected).max() <= 1.0


def test_overlay_video_is_the_blend_of_each_frame(tmp_path: Path, car_predictor: Predictor) -> None:
    write_video(tmp_path / "in.mp4", frames=6)
    seen, _ = read_video(tmp_path / "in.mp4")  # what the pipeline decodes
    run_inference(
        None,
        str(tmp_path / "in.mp4"),
        str(tmp_path / "o.mp4"),
        alpha=0.3,
        predictor=car_predictor,
        progress=False,
    )
    got, _ = read_video(tmp_path / "o.mp4")
    car = labels.PALETTE[CAR].astype(np.float64)
    expected = [np.round(0.3 * car + 0.7 * f).astype(np.uint8) for f in seen]
    reference = through_codec(expected, tmp_path / "ref.mp4")  # the same encoder on the exact expected frames
    assert len(got) == len(reference) == 6
    # a rounding step of one level can flip encoder decisions (and drift through P-frames): mean error
    errors = [np.abs(a.astype(int) - b).mean() for a, b in zip(got, reference)]
    assert max(errors) < 3.0, errors
    wrong_alpha = through_codec(
        [np.round(0.5 * car + 0.5 * f).astype(np.uint8) for f in seen], tmp_path / "w.mp4"
    )
    wrong = np.abs(got[0].astype(int) - wrong_alpha[0]).mean()
    assert wrong > 10, wrong  # the comparison tells alpha 0.3 from 0.5


def test_side_by_side_and_color_videos(tmp_path: Path, car_predictor: Predictor) -> None:
    write_video(tmp_path / "in.mp4", frames=4)
    seen, _ = read_video(tmp_path / "in.mp4")
    car = labels.PALETTE[CAR].astype(np.float64)
    run_inference(
        None,
        str(tmp_path / "in.mp4"),
        str(tmp_path / "sbs.mp4"),
        save="side_by_side",
        predictor=car_predictor,
        progress=False,
    )
    got, _ = read_video(tmp_path / "sbs.mp4")
    expected = [np.concatenate([f, np.round(0.5 * car + 0.5 * f).astype(np.uint8)], axis=1) for f in seen]
    reference = through_codec(expected, tmp_path / "ref.mp4")
    assert len(got) == 4 and got[0].shape == (64, 256, 3)
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(got, reference)) < 3.0
    run_inference(
        None,
        str(tmp_path / "in.mp4"),
        str(tmp_path / "color.mp4"),
        save="color",
        predictor=car_predictor,
        progress=False,
    )
    got, _ = read_video(tmp_path / "color.mp4")
    reference = through_codec(
        [np.broadcast_to(labels.PALETTE[CAR], f.shape).copy() for f in seen], tmp_path / "ref2.mp4"
    )
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(got, reference)) < 3.0


@pytest.mark.parametrize(("batch_size", "mask_step"), [(1, "writer thread"), (2, "model step")])
def test_folder_to_images_keeps_names_and_masks_match_predict(
    tmp_path: Path, sample_root: Path, predictor: Predictor, batch_size: int, mask_step: str
) -> None:
    val = sample_root / "leftImg8bit" / "val"
    inputs = sorted(val.rglob("*.png"))
    summary = run_inference(
        None,
        str(val),
        str(tmp_path / "masks"),
        save="mask",
        predictor=predictor,
        batch_size=batch_size,
        progress=False,
    )
    written = sorted(p.relative_to(tmp_path / "masks") for p in (tmp_path / "masks").rglob("*.png"))
    assert written == sorted(p.relative_to(val) for p in inputs)
    assert summary["frames"] == len(inputs) and summary["model_calls"] == -(-len(inputs) // batch_size)
    assert summary["mask_step"] == mask_step
    for path in inputs:
        mask = cv2.imread(str(tmp_path / "masks" / path.relative_to(val)), cv2.IMREAD_UNCHANGED)
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(mask, predictor.predict(rgb))
        assert len(np.unique(mask)) > 1  # a varied prediction, so the comparison means something


def test_label_ids_are_official_ids_under_benchmark_names(
    tmp_path: Path, sample_root: Path, car_predictor: Predictor
) -> None:
    val = sample_root / "leftImg8bit" / "val"
    run_inference(
        None, str(val), str(tmp_path / "ids"), save="labelIds", predictor=car_predictor, progress=False
    )
    for path in sorted(val.rglob("*.png")):
        out = tmp_path / "ids" / path.parent.name / path.name  # <city>_<seq>_<frame>_leftImg8bit.png
        ids = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert ids.shape == (64, 128) and set(np.unique(ids)) == {int(labels.TRAIN_ID_TO_ID[CAR])}  # id 26


def test_label_ids_for_video_frames_keep_frame_names(tmp_path: Path, car_predictor: Predictor) -> None:
    write_video(tmp_path / "drive.mp4", frames=3)
    run_inference(
        None,
        str(tmp_path / "drive.mp4"),
        str(tmp_path / "ids"),
        save="labelIds",
        predictor=car_predictor,
        progress=False,
    )
    names = sorted(p.name for p in (tmp_path / "ids").glob("*.png"))
    assert names == ["drive_000000.png", "drive_000001.png", "drive_000002.png"]
    assert set(np.unique(cv2.imread(str(tmp_path / "ids" / names[0]), cv2.IMREAD_UNCHANGED))) == {26}


def test_folder_as_video_uses_configured_fps(tmp_path: Path, sample_root: Path, predictor: Predictor) -> None:
    val = sample_root / "leftImg8bit" / "val"
    summary = run_inference(
        None, str(val), str(tmp_path / "v.mp4"), as_video=True, fps=5, predictor=predictor, progress=False
    )
    frames, fps = read_video(tmp_path / "v.mp4")
    assert len(frames) == len(list(val.rglob("*.png"))) == summary["frames"] and fps == pytest.approx(5.0)
    assert frames[0].shape == (64, 128, 3)


def test_truncated_video_gives_valid_output_of_the_readable_frames(
    tmp_path: Path, predictor: Predictor
) -> None:
    write_video(tmp_path / "full.avi", frames=20, fourcc="MJPG")
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])
    cap = cv2.VideoCapture(str(tmp_path / "cut.avi"))
    readable = 0
    while cap.read()[0]:
        readable += 1
    summary = run_inference(
        None, str(tmp_path / "cut.avi"), str(tmp_path / "out.mp4"), predictor=predictor, progress=False
    )
    frames, _ = read_video(tmp_path / "out.mp4")
    assert 0 < readable < 20 and len(frames) == readable == summary["frames"]
    assert summary["stopped_early"] and f"frame {readable + 1} of 20" in summary["stop_reason"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ctrl_c_leaves_a_valid_video_with_the_frames_done(
    tmp_path: Path, predictor: Predictor, batch_size: int
) -> None:
    write_video(tmp_path / "in.mp4", frames=20)
    summary = run_inference(
        None,
        str(tmp_path / "in.mp4"),
        str(tmp_path / "out.mp4"),
        predictor=Interrupting(predictor, 2),
        batch_size=batch_size,
        progress=False,
    )
    frames, _ = read_video(tmp_path / "out.mp4")
    assert len(frames) == summary["frames"] == 2 * batch_size
    assert summary["stopped_early"] and "Ctrl-C" in summary["stop_reason"]


def test_predictor_error_is_raised_after_a_clean_stop(tmp_path: Path, predictor: Predictor) -> None:
    class Failing(Interrupting):
        def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
            self.calls += 1
            if self.calls > self.k:
                raise RuntimeError("device lost")
            return self.inner.predict_batch(images)

    write_video(tmp_path / "in.mp4", frames=10)
    with pytest.raises(RuntimeError, match="device lost"):
        run_inference(
            None,
            str(tmp_path / "in.mp4"),
            str(tmp_path / "out.mp4"),
            predictor=Failing(predictor, 3),
            progress=False,
        )
    assert len(read_video(tmp_path / "out.mp4")[0]) == 3


def test_camera_that_disappears_stops_cleanly(tmp_path: Path, predictor: Predictor) -> None:
    from segkit.inference.sources import VideoSource

    write_video(tmp_path / "cam.mp4", frames=6)
    source = VideoSource(str(tmp_path / "cam.mp4"), "camera")  # reads fail after 6 frames, like an unplug
    sink = VideoSink(tmp_path / "out.mp4", "overlay", predictor.palette, 0.5, fps=10)
    summary = process_frames(predictor, source, sink, progress=False)
    assert len(read_video(tmp_path / "out.mp4")[0]) == 6 == summary["frames"]
    assert summary["total_frames"] is None
    assert summary["stopped_early"] and "stopped delivering frames after 6" in summary["stop_reason"]


def test_ema_smoothing_reduces_frame_to_frame_label_changes(tmp_path: Path, predictor: Predictor) -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (64, 128, 3)).astype(np.int16)
    (tmp_path / "frames").mkdir()
    for i in range(12):  # one still scene with fresh sensor noise in each frame
        noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "frames" / f"f{i:02d}.png"), cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))
    changes = {}
    for kind in ("none", "ema"):
        out = tmp_path / kind
        summary = run_inference(
            None,
            str(tmp_path / "frames"),
            str(out),
            save="mask",
            smoothing=kind,
            smoothing_alpha=0.2,
            predictor=predictor,
            progress=False,
        )
        assert summary["frames"] == 12
        masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(out.glob("*.png"))]
        changes[kind] = sum(int((a != b).sum()) for a, b in zip(masks, masks[1:]))
    assert changes["none"] > 0 and changes["ema"] < 0.6 * changes["none"], changes


def test_reader_stays_a_bounded_distance_ahead_of_the_model(tmp_path: Path, predictor: Predictor) -> None:
    class Counting(FrameSource):
        kind, description, total = "images", "counting", 40

        def __init__(self) -> None:
            super().__init__()
            self.pulled = 0

        def __iter__(self):
            from segkit.inference.sources import Frame

            for i in range(40):
                self.pulled += 1
                yield Frame(i, np.zeros((32, 64, 3), np.uint8), f"f{i:02d}.png")

    class Slow(Interrupting):
        def __init__(self, inner: Predictor, source: Counting) -> None:
            super().__init__(inner, 10**9)
            self.source, self.done, self.lead = source, 0, 0

        def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
            import time

            time.sleep(0.01)  # let the reader run as far ahead as the queue allows
            self.lead = max(self.lead, self.source.pulled - self.done)
            self.done += len(images)
            return self.inner.predict_batch(images)

    source = Counting()
    slow = Slow(predictor, source)
    sink = VideoSink(tmp_path / "o.mp4", "overlay", predictor.palette, 0.5, fps=10)
    summary = process_frames(slow, source, sink, queue_size=4, batch_size=2, progress=False)
    assert summary["frames"] == 40
    assert 4 <= slow.lead <= 4 + 2 + 2  # queue + the batch being assembled + the frame being put


def test_show_without_gui_says_why_and_still_runs(tmp_path: Path, predictor: Predictor) -> None:
    write_video(tmp_path / "in.mp4", frames=3)
    summary = run_inference(
        None,
        str(tmp_path / "in.mp4"),
        str(tmp_path / "o.mp4"),
        show=True,
        predictor=predictor,
        progress=False,
    )
    assert summary["frames"] == 3 and "show=true ignored" in summary["show"]
    assert "GUI" in summary["show"] or "display" in summary["show"]


def test_onnx_model_gives_the_same_masks_as_the_checkpoint(tmp_path: Path, ckpt: Path) -> None:
    from segkit.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
    from segkit.export.metadata import build_metadata
    from segkit.export.onnx import ExportWrapper, export_onnx

    meta = load_checkpoint(ckpt)
    model = build_model_from_checkpoint(meta)
    onnx_path = export_onnx(
        ExportWrapper(model, meta["mean"], meta["std"]),
        tmp_path / "m.onnx",
        input_size=(64, 128),
        metadata=build_metadata(
            model_name=MODEL,
            class_names=meta["class_names"],
            palette=meta["palette"],
            mean=meta["mean"],
            std=meta["std"],
            input_size=(64, 128),
            dynamic=False,
            preprocess=False,
            argmax=False,
        ),
    )
    write_video(tmp_path / "in.mp4", frames=4)
    for name, model_file in (("pt", ckpt), ("onnx", onnx_path)):
        summary = run_inference(
            str(model_file),
            str(tmp_path / "in.mp4"),
            str(tmp_path / name),
            save="mask",
            threads=1,
            progress=False,
        )
        assert summary["frames"] == 4
    backend = {
        name: json.loads((tmp_path / name / "summary.json").read_text())["backend"] for name in ("pt", "onnx")
    }
    assert backend == {"pt": "pytorch", "onnx": "onnxruntime"}
    for i in range(4):
        a = cv2.imread(str(tmp_path / "pt" / f"in_{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "onnx" / f"in_{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert (a == b).mean() > 0.99


def test_bad_inputs_fail_before_the_model_is_loaded(tmp_path: Path) -> None:
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_bytes(b"this is not a checkpoint")  # loading it would fail: errors must come first
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="input not found"):
        run_inference(str(not_a_model), str(tmp_path / "missing.mp4"), str(tmp_path / "o.mp4"))
    with pytest.raises(SourceError, match="contains no images"):
        run_inference(str(not_a_model), str(tmp_path / "empty"), str(tmp_path / "o"))
    with pytest.raises(SourceError, match=r"unknown input extension '\.txt'"):
        run_inference(str(not_a_model), str(tmp_path / "notes.txt"), str(tmp_path / "o"))
    write_video(tmp_path / "in.mp4", frames=2)
    with pytest.raises(SinkError, match="lossy video codec"):
        run_inference(str(not_a_model), str(tmp_path / "in.mp4"), str(tmp_path / "o.mp4"), save="mask")
    with pytest.raises(SinkError, match=r"as_video=true needs output= to end in \.mp4"):
        run_inference(str(not_a_model), str(tmp_path / "in.mp4"), str(tmp_path / "o"), as_video=True)
    with pytest.raises(SinkError, match="has several frames"):
        run_inference(str(not_a_model), str(tmp_path / "in.mp4"), str(tmp_path / "o.png"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run_inference(str(tmp_path / "nope.onnx"), str(tmp_path / "in.mp4"), str(tmp_path / "o.mp4"))
    with pytest.raises(ValueError, match="unknown smoothing"):
        run_inference(str(not_a_model), str(tmp_path / "in.mp4"), str(tmp_path / "o.mp4"), smoothing="median")
    with pytest.raises(ValueError, match="unknown save='heatmap'"):
        run_inference(str(not_a_model), str(tmp_path / "in.mp4"), str(tmp_path / "o.mp4"), save="heatmap")
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o").exists()
    assert open_source(str(tmp_path / "in.mp4")).total == 2  # the file itself was fine


def test_progress_bar_shows_done_of_total_and_rate(
    tmp_path: Path, predictor: Predictor, capsys: pytest.CaptureFixture
) -> None:
    write_video(tmp_path / "in.mp4", frames=5)
    run_inference(None, str(tmp_path / "in.mp4"), str(tmp_path / "o.mp4"), predictor=predictor, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "frame/s" in err


def test_max_frames_stops_an_endless_source(tmp_path: Path, predictor: Predictor) -> None:
    from segkit.inference.sources import VideoSource

    write_video(tmp_path / "cam.mp4", frames=8)
    source = VideoSource(str(tmp_path / "cam.mp4"), "camera")
    sink = VideoSink(tmp_path / "out.mp4", "overlay", predictor.palette, 0.5, fps=10)
    summary = process_frames(predictor, source, sink, max_frames=3, progress=False)
    assert summary["frames"] == 3 == len(read_video(tmp_path / "out.mp4")[0])
    assert summary["stop_reason"] == "max_frames=3 reached"


class _ListSource(FrameSource):
    """Frames from memory; raises ``fail`` after ``fail_after`` frames (a decoder that crashes)."""

    kind, description = "images", "memory"

    def __init__(self, n: int, fail_after: int | None = None) -> None:
        super().__init__()
        self.total, self.n, self.fail_after = n, n, fail_after

    def __iter__(self):
        from segkit.inference.sources import Frame

        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise OSError("device read failed")
            yield Frame(i, np.full((32, 64, 3), 10 * i, np.uint8), f"f{i:02d}.png")


def test_reader_crash_ends_the_run_with_the_frames_read(tmp_path: Path, predictor: Predictor) -> None:
    sink = VideoSink(tmp_path / "o.mp4", "overlay", predictor.palette, 0.5, fps=10)
    summary = process_frames(predictor, _ListSource(10, fail_after=4), sink, progress=False)
    assert summary["frames"] == 4 == len(read_video(tmp_path / "o.mp4")[0])
    assert summary["stopped_early"] and "OSError: device read failed" in summary["stop_reason"]


def test_writer_failure_is_raised_without_hanging_the_threads(tmp_path: Path, predictor: Predictor) -> None:
    class FullDisk(VideoSink):
        def write(self, frame, mask):  # noqa: ANN001, ANN201
            if self.written == 3:
                raise SinkError("no space left on device")
            return super().write(frame, mask)

    sink = FullDisk(tmp_path / "o.mp4", "overlay", predictor.palette, 0.5, fps=10)
    with pytest.raises(SinkError, match="no space left"):
        process_frames(predictor, _ListSource(50), sink, queue_size=2, progress=False)
    assert len(read_video(tmp_path / "o.mp4")[0]) == 3  # released: the frames before the failure play
