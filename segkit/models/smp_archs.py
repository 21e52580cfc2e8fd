"""segmentation-models-pytorch's architectures, made to accept any input size.

smp models need H and W divisible by the encoder's total stride. Each subclass here pads the input
(bottom/right, zeros = the normalised mean colour) to ``pad_multiple`` and crops the logits back, so
``forward`` returns N x C x H x W for any H, W. The classes are module-level (picklable) and keep smp's
parameter names (``encoder.*``, ``decoder.*``, ``segmentation_head.*``).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F


class PadToMultiple:
    """Mixin for an smp model: pad to ``pad_multiple``, run it, crop the logits to the input size."""

    pad_multiple: int = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = int(self.pad_multiple)
        pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
        # Traced (ONNX export), the sizes are tensors: at a multiple of the stride nothing is added, so a
        # fixed-size graph keeps static shapes; otherwise the pad/crop amounts are computed in the graph,
        # so an export with dynamic height/width pads correctly at every size, not just the export size.
        if bool(pad_h == 0) and bool(pad_w == 0):
            return super().forward(x)  # type: ignore[misc]
        out = super().forward(F.pad(x, [0, pad_w, 0, pad_h]))  # type: ignore[misc]
        return out[..., :h, :w]


#: lower-case arch name -> padded smp model class
SMP_ARCHITECTURES: dict[str, type[smp.base.SegmentationModel]] = {}
for _arch, _cls in smp.MODEL_ARCHITECTURES_MAPPING.items():
    _padded = type(
        _cls.__name__,
        (PadToMultiple, _cls),
        {
            "__module__": __name__,
            "__qualname__": _cls.__name__,
            "__doc__": f"smp's {_cls.__name__}, any size.",
        },
    )
    globals()[_cls.__name__] = _padded
    SMP_ARCHITECTURES[_arch] = _padded
