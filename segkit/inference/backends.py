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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.formats.description import ModelDescription, ModelFileError
from segkit.formats.metadata import (
    EXECUTORCH_META_METHOD,
    decode_metadata,
    read_torchscript_metadata,
)

#: the Predictor's view of a model file's metadata (the one record, under its historical name here)
ModelInfo = ModelDescription


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
