"""Back ends of the predictor: each turns a prepared batch into network outputs, and nothing more.

Resizing, padding and normalisation live in :mod:`segkit.inference.predictor`, once for all of them, so
the PyTorch model, the ONNX graph and the TorchScript file see exactly the same tensors.

A back end takes a batch that is either float32 N x 3 x h x w (normalised) or, for graphs exported with
in-graph preprocessing, uint8 N x h x w x 3 RGB, and returns float32 logits N x C x h x w or, for graphs
with in-graph argmax, a uint8 N x h x w trainId mask.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from segkit import labels
from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD

#: Name of the JSON file stored inside TorchScript archives (``_extra_files``) with the model's metadata.
TORCHSCRIPT_META_FILE = "segkit.json"
#: Name of the constant method of ExecuTorch programs that returns the model's metadata as JSON.
EXECUTORCH_META_METHOD = "segkit_metadata"

InputKind = Literal["float", "uint8"]
OutputKind = Literal["logits", "mask"]


class ModelFileError(ValueError):
    """A file cannot be used as a segkit model; the message names the file and what is wrong."""


@dataclass
class ModelInfo:
    """What the predictor must know about a model besides its weights.

    ``input_size`` is the fixed (H, W) the graph was built for, or None for a graph that takes any size;
    ``input_kind`` says whether the graph normalises uint8 RGB itself, ``output_kind`` whether it
    returns logits or an argmax mask.
    """

    class_names: list[str] = field(default_factory=lambda: list(labels.CLASS_NAMES))
    palette: np.ndarray = field(default_factory=lambda: labels.PALETTE.copy())
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None
    input_kind: InputKind = "float"
    output_kind: OutputKind = "logits"
    dynamic: bool = True
    model_name: str = ""

    @classmethod
    def from_mapping(cls, meta: Mapping[str, Any], *, source: str | os.PathLike = "") -> ModelInfo:
        """Build from a checkpoint's or an exported file's metadata dict (missing keys get defaults)."""
        defaults = cls()
        try:
            size = meta.get("input_size")
            info = cls(
                class_names=[str(n) for n in meta.get("class_names", defaults.class_names)],
                palette=np.asarray(meta.get("palette", defaults.palette), dtype=np.uint8).reshape(-1, 3),
                mean=tuple(float(m) for m in meta.get("mean", defaults.mean)),  # type: ignore[arg-type]
                std=tuple(float(s) for s in meta.get("std", defaults.std)),  # type: ignore[arg-type]
                input_size=(int(size[0]), int(size[1])) if size else None,
                input_kind=str(meta.get("input_kind", "float")),  # type: ignore[arg-type]
                output_kind=str(meta.get("output_kind", "logits")),  # type: ignore[arg-type]
                dynamic=bool(meta.get("dynamic", size is None)),
                model_name=str(meta.get("model_name", "")),
            )
        except (TypeError, ValueError, IndexError) as exc:
            raise ModelFileError(f"{source}: malformed segkit metadata ({exc})") from None
        if info.input_kind not in ("float", "uint8"):
            raise ModelFileError(f"{source}: input_kind must be 'float' or 'uint8', got {info.input_kind!r}")
        if info.output_kind not in ("logits", "mask"):
            raise ModelFileError(
                f"{source}: output_kind must be 'logits' or 'mask', got {info.output_kind!r}"
            )
        if len(info.palette) != len(info.class_names):
            raise ModelFileError(
                f"{source}: palette has {len(info.palette)} colours for {len(info.class_names)} classes"
            )
        return info


class Backend:
    """Runs one prepared batch through a network. Subclasses set ``name`` and implement ``run``."""

    name = "base"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32 N x C x h x w) or a mask (uint8 N x h x w) for ``batch``."""
        raise NotImplementedError


def _logits(output: Any) -> torch.Tensor:
    """The logits tensor of a model output (plain tensor, torchvision-style dict or tuple)."""
    if isinstance(output, Mapping):
        output = output["out"]
    elif isinstance(output, (tuple, list)):
        output = output[0]
    return output


class TorchBackend(Backend):
    """An ``nn.Module`` in eval mode; the output is upsampled to the input size if the model does not."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        out = _logits(self.model(x))
        if out.shape[-2:] != x.shape[-2:]:
            out = torch.nn.functional.interpolate(
                out, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return out.float().cpu().numpy()


class TorchScriptBackend(TorchBackend):
    """A traced TorchScript file written by ``segkit.export`` (metadata in its extra files)."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.meta = read_torchscript_metadata(path)
        module = torch.jit.load(str(path), map_location=torch.device(device))
        super().__init__(module, device)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        out = _logits(self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)))
        return out.cpu().numpy()


def fill_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """``images`` (N x ...) followed by copies of the last one up to a multiple of ``multiple`` images:
    what a graph with a fixed batch of ``multiple`` can run in whole batches."""
    return np.concatenate([images, np.repeat(images[-1:], -len(images) % multiple, axis=0)])


class OnnxBackend(Backend):
    """An ONNX file run by onnxruntime, with ``threads`` intra-op threads on the CPU provider."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelFileError(
                    f"{path}: device={device!r} asked for, but this onnxruntime build has no CUDA provider "
                    f"(available: {ort.get_available_providers()})"
                )
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelFileError(
                f"{path} is not a loadable ONNX model ({type(exc).__name__}: {exc})"
            ) from None
        from segkit.export.metadata import decode_metadata  # here: segkit.export imports this module

        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        #: the graph's fixed batch size (an export with ``batch=N``), or None when it takes any
        self.fixed_batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None
        self.meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        step = self.fixed_batch
        if step is None or len(batch) == step:
            return self.session.run(None, {self.input_name: batch})[0]
        # a fixed-batch graph runs the images in chunks of its size, the last one filled up with copies
        full = fill_to_multiple(batch, step)
        outs = [
            self.session.run(None, {self.input_name: full[start : start + step]})[0]
            for start in range(0, len(full), step)
        ]
        return np.concatenate(outs)[: len(batch)]


class ExecuTorchBackend(Backend):
    """An ExecuTorch program (.pte) written by ``segkit.export mobile=executorch``; batch 1, fixed size."""

    name = "executorch"

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise ModelFileError(
                f"{path}: running .pte files needs the executorch package (pip install 'segkit[mobile]')"
            ) from None
        try:
            program = Runtime.get().load_program(str(path))
        except Exception as exc:  # the runtime raises RuntimeError/ValueError for foreign files
            raise ModelFileError(f"{path} is not a loadable ExecuTorch program ({exc})") from None
        if EXECUTORCH_META_METHOD not in program.method_names:
            raise ModelFileError(f"{path} is an ExecuTorch program without segkit metadata")
        self.meta = json.loads(program.load_method(EXECUTORCH_META_METHOD).execute([])[0])
        self.method = program.load_method("forward")

    def run(self, batch: np.ndarray) -> np.ndarray:
        outs = [self.method.execute([torch.from_numpy(np.ascontiguousarray(b[None]))])[0] for b in batch]
        return torch.cat(outs).numpy()


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The segkit metadata stored in a TorchScript archive written by ``segkit.export``."""
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError for foreign files
        raise ModelFileError(
            f"{path} is not a loadable TorchScript file ({type(exc).__name__}: {exc})"
        ) from None
    raw = extra[TORCHSCRIPT_META_FILE]
    if not raw:
        raise ModelFileError(f"{path} is TorchScript but holds no segkit metadata ({TORCHSCRIPT_META_FILE})")
    return json.loads(raw)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip archive (it has ``code/`` entries; ``torch.save`` files do not)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in name or name.startswith("code/") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def sniff_kind(path: Path) -> str:
    """'checkpoint', 'torchscript' or 'onnx' for a model file, from its name and, for .pt, its content."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".ts":
        return "torchscript"
    if suffix == ".pte":
        return "executorch"
    if suffix in (".pt", ".pth", ".ckpt"):
        return "torchscript" if is_torchscript_archive(path) else "checkpoint"
    raise ModelFileError(
        f"{path}: unknown model file type {suffix or '(no extension)'!r}; expected a segkit checkpoint "
        "(.pt/.pth/.ckpt), an ONNX model (.onnx), an ExecuTorch program (.pte) or a TorchScript file (.ts)"
    )


def check_batch_sizes(images: Sequence[np.ndarray]) -> None:
    """Reject anything that is not an H x W x 3 uint8 RGB image, naming its position."""
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"image {i}: expected an H x W x 3 uint8 RGB array, got {desc}")
