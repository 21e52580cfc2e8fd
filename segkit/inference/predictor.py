"""One predictor for every back end: a segkit checkpoint, an exported ONNX graph or a TorchScript file.

Resizing to the model's working size, padding, normalisation and the way back to the image's size are
done here once, so every back end only maps a prepared tensor to logits and all of them give the same
mask for the same image.

Working size: a model with a fixed input size (a static ONNX/TorchScript graph, a checkpoint trained
with ``input_size`` or an explicit ``input_size=``) gets the image scaled to fit inside that size with its
aspect ratio kept, padded at the bottom/right with the mean colour. A model that takes any size gets the
image at its own size, padded up to a multiple of 32 (the encoder's stride). The padding is cropped off
again before the way back, so ``probabilities`` always covers exactly the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from segkit.formats.checkpoint import CheckpointError, description_of, load_checkpoint
from segkit.formats.description import ModelDescription, ModelFileError
from segkit.inference.backends import (
    Backend,
    ExecuTorchBackend,
    OnnxBackend,
    TorchBackend,
    TorchScriptBackend,
    check_batch_sizes,
    sniff_kind,
)
from segkit.labels import colorize
from segkit.models.from_checkpoint import build_model_from_checkpoint

#: Sizes of graphs without a fixed input size are padded to a multiple of this (the encoder's stride).
PAD_MULTIPLE = 32


def fit_size(image_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """The largest (h, w) with the image's aspect ratio that fits inside ``target_hw``."""
    (h, w), (th, tw) = image_hw, target_hw
    scale = min(th / h, tw / w)
    return max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))


def prepare_image(
    rgb: np.ndarray,
    input_size: tuple[int, int] | None,
    mean: Sequence[float],
    pad_multiple: int = PAD_MULTIPLE,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize/pad one uint8 RGB image to the working size; returns (canvas uint8 h x w x 3, valid (h, w)).

    The padding is the mean colour, which normalises to zero: the same as zero padding of the tensor.
    """
    h, w = rgb.shape[:2]
    if input_size is None:
        vh, vw = h, w
        ch, cw = math.ceil(h / pad_multiple) * pad_multiple, math.ceil(w / pad_multiple) * pad_multiple
        resized = rgb
    else:
        vh, vw = fit_size((h, w), input_size)
        ch, cw = input_size
        resized = rgb if (vh, vw) == (h, w) else cv2.resize(rgb, (vw, vh), interpolation=cv2.INTER_LINEAR)
    if (vh, vw) == (ch, cw):
        return np.ascontiguousarray(resized), (vh, vw)
    fill = np.clip(np.round(np.asarray(mean, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    canvas = np.empty((ch, cw, 3), dtype=np.uint8)
    canvas[...] = fill
    canvas[:vh, :vw] = resized
    return canvas, (vh, vw)


def normalize_batch(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 N x h x w x 3 RGB -> float32 N x 3 x h x w, ``(x / 255 - mean) / std``."""
    x = batch.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Predictor:
    """Segment RGB images with any segkit model file; see the module docstring for the resizing rules.

    Attributes: ``class_names``, ``palette`` (C x 3 uint8), ``input_size`` (the fixed working size or
    None), ``backend`` ('pytorch', 'onnxruntime', 'executorch' or 'torchscript'), ``info`` (all metadata).
    """

    def __init__(
        self, backend: Backend, info: ModelDescription, input_size: tuple[int, int] | None = None
    ) -> None:
        if input_size is not None:
            input_size = (int(input_size[0]), int(input_size[1]))
            if info.input_size is not None and not info.dynamic and tuple(info.input_size) != input_size:
                raise ValueError(
                    f"input_size={list(input_size)} differs from the fixed size {list(info.input_size)} "
                    "this graph was exported with; export it again with dynamic=true or that size"
                )
        self._backend = backend
        self.info = info
        self.input_size: tuple[int, int] | None = input_size or info.input_size
        self.class_names: list[str] = list(info.class_names)
        self.palette: np.ndarray = np.asarray(info.palette, dtype=np.uint8)
        self.backend: str = backend.name

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        input_size: Sequence[int] | None = None,
        use_ema: bool = False,
    ) -> Predictor:
        """Open a segkit checkpoint (.pt), ONNX model (.onnx), ExecuTorch (.pte) or TorchScript (.ts) export.

        ``threads`` sets onnxruntime's intra-op threads, or torch's thread count for the PyTorch back ends.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        kind = sniff_kind(path)
        size = (int(input_size[0]), int(input_size[1])) if input_size is not None else None
        if kind != "onnx" and threads:
            torch.set_num_threads(int(threads))
        if kind == "onnx":
            backend: Backend = OnnxBackend(path, device=device, threads=threads)
            meta: dict[str, Any] = backend.meta  # type: ignore[attr-defined]
            if meta.get("format") != "segkit-onnx":
                meta = {**_meta_from_onnx_signature(backend), **meta}  # a foreign graph: read its shapes
            info = ModelDescription.from_dict(meta, source=path)
        elif kind == "executorch":
            backend = ExecuTorchBackend(path)
            info = ModelDescription.from_dict(backend.meta, source=path)  # type: ignore[attr-defined]
        elif kind == "torchscript":
            backend = TorchScriptBackend(path, device=device)
            info = ModelDescription.from_dict(backend.meta, source=path)  # type: ignore[attr-defined]
        else:
            try:
                ckpt = load_checkpoint(path)
                model = build_model_from_checkpoint(ckpt, use_ema=use_ema)
            except CheckpointError as exc:
                raise ModelFileError(str(exc)) from None
            info = description_of(ckpt, source=path)
            backend = TorchBackend(model, device=device)
        return cls(backend, info, input_size=size)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        metadata: dict[str, Any] | None = None,
        device: str = "cpu",
        input_size: Sequence[int] | None = None,
    ) -> Predictor:
        """Wrap an in-memory model (e.g. during training) with checkpoint-style ``metadata``."""
        info = ModelDescription.from_dict({**(metadata or {}), "dynamic": True}, source="model")
        size = (int(input_size[0]), int(input_size[1])) if input_size is not None else None
        return cls(TorchBackend(model, device=device), info, input_size=size)

    # ---------------------------------------------------------------------------------------- running
    def _run(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """Raw outputs (C x vh x vw logits or vh x vw mask, padding cropped) for each image."""
        check_batch_sizes(images)
        prepared = [prepare_image(img, self.input_size, self.info.mean) for img in images]
        results: list[Any] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (canvas, _) in enumerate(prepared):
            groups.setdefault(canvas.shape, []).append(i)
        for idx in groups.values():
            batch = np.stack([prepared[i][0] for i in idx])
            if self.info.input_kind == "float":
                batch = normalize_batch(batch, self.info.mean, self.info.std)
            out = self._backend.run(batch)
            for j, i in enumerate(idx):
                vh, vw = prepared[i][1]
                results[i] = (out[j, ..., :vh, :vw], images[i].shape[:2])
        return results

    def _to_mask(self, out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.info.output_kind == "mask":
            mask = np.ascontiguousarray(out, dtype=np.uint8)
            if mask.shape != tuple(size):
                mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            return mask
        return self.mask_from_probabilities(out, size)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 H x W trainId mask of one H x W x 3 uint8 RGB image, at the image's own size."""
        return self.predict_batch([rgb])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks of several images; images that share a working size run as one batch."""
        return [self._to_mask(out, size) for out, size in self._run(images)]

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """float32 C x h x w logits at the model's working size (padding removed)."""
        if self.info.output_kind != "logits":
            raise ValueError(
                f"this {self.backend} model was exported with argmax=true: it returns a mask only"
            )
        return np.ascontiguousarray(self._run([rgb])[0][0], dtype=np.float32)

    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """float32 C x h x w softmax class probabilities at the model's working size (padding removed)."""
        logits = torch.from_numpy(self.logits(rgb))
        return torch.softmax(logits, dim=0).numpy()

    def mask_from_probabilities(self, probs: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """uint8 H x W argmax mask of C x h x w scores (probabilities or logits) resized to ``size``.

        Bilinear upsampling of the scores, then argmax, as the network's own upsampling does.
        """
        scores = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
        if scores.ndim != 3:
            raise ValueError(f"expected C x h x w scores, got shape {tuple(scores.shape)}")
        h, w = int(size[0]), int(size[1])
        if tuple(scores.shape[1:]) != (h, w):
            scores = torch.nn.functional.interpolate(
                scores[None], size=(h, w), mode="bilinear", align_corners=False
            )[0]
        # numpy's argmax over the leading axis is ~2x faster than torch's on CPU, with the same tie rule
        return np.argmax(scores.numpy(), axis=0).astype(np.uint8)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """H x W x 3 RGB image of a trainId mask in this model's palette (unknown ids -> black)."""
        return colorize(mask, self.palette)

    def __repr__(self) -> str:
        return (
            f"Predictor(backend={self.backend!r}, model={self.info.model_name!r}, "
            f"classes={len(self.class_names)}, input_size={self.input_size})"
        )


def _meta_from_onnx_signature(backend: OnnxBackend) -> dict[str, Any]:
    """Best-effort metadata of an ONNX graph that segkit did not write: its input shape and dtype."""
    inp = backend.session.get_inputs()[0]
    shape = list(inp.shape)
    meta: dict[str, Any] = {"input_kind": "uint8" if "uint8" in inp.type else "float"}
    if len(shape) == 4:
        hw = shape[1:3] if meta["input_kind"] == "uint8" else shape[2:4]
        if all(isinstance(d, int) for d in hw):
            meta["input_size"] = hw
            meta["dynamic"] = False
    out = backend.session.get_outputs()[0]
    meta["output_kind"] = "logits" if "float" in out.type else "mask"
    return meta
