"""``ModelDescription``: the one record of what a model file says about itself.

Checkpoints, ONNX graphs, ExecuTorch programs and TorchScript archives all carry the same fields, so a
model file alone tells inference how to feed it (normalisation, input size, input kind) and how to read
it (class names, palette, output kind). Training writes it from the config it trained with; export
copies it into every file it writes; the Predictor reads it back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from segkit import labels

#: ImageNet normalisation (on 0..1 values), what torchvision's and timm's weights were trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

InputKind = Literal["float", "uint8"]
OutputKind = Literal["logits", "mask"]
#: ``format`` value of the metadata of a file written by ``segkit.export``.
EXPORT_FORMAT = "segkit-onnx"


class ModelFileError(ValueError):
    """A file cannot be used as a segkit model; the message names the file and what is wrong."""


def _palette_for(class_names: Sequence[str]) -> np.ndarray:
    """The Cityscapes palette for the Cityscapes classes; black for any other label set."""
    if tuple(class_names) == labels.CLASS_NAMES[: len(class_names)]:
        return labels.PALETTE[: len(class_names)].copy()
    return np.zeros((len(class_names), 3), dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class ModelDescription:
    """Everything besides the weights that inference and export must know about a model.

    ``input_size`` is the fixed (H, W) a graph was built for, or the size a checkpoint is meant to run
    at, or None for any size. ``input_kind``: 'float' (N x 3 x H x W normalised by the caller) or 'uint8'
    (N x H x W x 3 RGB, normalised in the graph). ``output_kind``: 'logits' (N x C x H x W) or 'mask'
    (uint8 N x H x W trainIds). ``dynamic``: the file also takes sizes other than ``input_size``;
    ``batch``: the file's fixed batch size (None: any).
    """

    class_names: tuple[str, ...] = labels.CLASS_NAMES
    palette: np.ndarray = field(default_factory=lambda: labels.PALETTE.copy())
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None
    ignore_index: int = labels.IGNORE_INDEX
    model_name: str = ""
    input_kind: InputKind = "float"
    output_kind: OutputKind = "logits"
    dynamic: bool = True
    batch: int | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        # plain, comparable values whatever the caller passed (lists from JSON, OmegaConf lists, arrays)
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "palette", np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.input_size is not None:
            object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelDescription) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking (an array field): not a dict key

    @classmethod
    def for_classes(cls, class_names: Sequence[str], **fields: Any) -> ModelDescription:
        """A description for ``class_names`` with the matching palette (Cityscapes' or black)."""
        return cls(class_names=tuple(class_names), palette=_palette_for(class_names), **fields)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def replace(self, **changes: Any) -> ModelDescription:
        """A copy with ``changes`` (e.g. the input kind of one exported file)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ plain-dict forms
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: the metadata of an exported file (``format: segkit-onnx``)."""
        return {
            "format": EXPORT_FORMAT,
            "model_name": str(self.model_name),
            "num_classes": self.num_classes,
            "class_names": [str(n) for n in self.class_names],
            "palette": np.asarray(self.palette, dtype=np.int64).reshape(-1, 3).tolist(),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "input_size": None if self.input_size is None else [int(s) for s in self.input_size],
            "ignore_index": int(self.ignore_index),
            "dynamic": bool(self.dynamic),
            "batch": None if self.batch is None else int(self.batch),
            "input_kind": self.input_kind,
            "input_layout": "NHWC" if self.input_kind == "uint8" else "NCHW",
            "output_kind": self.output_kind,
            "precision": self.precision,
        }

    def checkpoint_fields(self) -> dict[str, Any]:
        """The descriptive entries of a segkit checkpoint (plain lists, loadable with weights_only)."""
        return {
            "class_names": [str(n) for n in self.class_names],
            "palette": [[int(c) for c in rgb] for rgb in np.asarray(self.palette).reshape(-1, 3)],
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "input_size": None if self.input_size is None else [int(s) for s in self.input_size],
            "ignore_index": int(self.ignore_index),
        }

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], *, source: str | os.PathLike = "") -> ModelDescription:
        """Read a checkpoint's or an exported file's metadata back; missing keys get the defaults.

        Raises :class:`ModelFileError` naming ``source`` for malformed values.
        """
        defaults = cls()
        try:
            names = tuple(str(n) for n in meta.get("class_names", defaults.class_names))
            palette = meta.get("palette")
            size = meta.get("input_size")
            config = meta.get("model_config") or {}
            batch = meta.get("batch")
            desc = cls(
                class_names=names,
                palette=(
                    _palette_for(names)
                    if palette is None
                    else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
                ),
                mean=tuple(float(m) for m in meta.get("mean", defaults.mean)),  # type: ignore[arg-type]
                std=tuple(float(s) for s in meta.get("std", defaults.std)),  # type: ignore[arg-type]
                input_size=(int(size[0]), int(size[1])) if size else None,
                ignore_index=int(meta.get("ignore_index", defaults.ignore_index)),
                model_name=str(meta.get("model_name", config.get("name") or "") or ""),
                input_kind=str(meta.get("input_kind", "float")),  # type: ignore[arg-type]
                output_kind=str(meta.get("output_kind", "logits")),  # type: ignore[arg-type]
                dynamic=bool(meta.get("dynamic", size is None)),
                batch=None if batch is None else int(batch),
                precision=str(meta.get("precision", "fp32")),
            )
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ModelFileError(f"{source}: malformed segkit metadata ({exc})") from None
        desc.check(source)
        return desc

    def check(self, source: str | os.PathLike = "") -> None:
        """Raise :class:`ModelFileError` naming ``source`` when the fields contradict each other."""
        if self.input_kind not in ("float", "uint8"):
            raise ModelFileError(f"{source}: input_kind must be 'float' or 'uint8', got {self.input_kind!r}")
        if self.output_kind not in ("logits", "mask"):
            raise ModelFileError(
                f"{source}: output_kind must be 'logits' or 'mask', got {self.output_kind!r}"
            )
        if len(self.palette) != len(self.class_names):
            raise ModelFileError(
                f"{source}: palette has {len(self.palette)} colours for {len(self.class_names)} classes"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelFileError(
                f"{source}: mean/std must be 3 values each (std > 0), got {self.mean}, {self.std}"
            )
