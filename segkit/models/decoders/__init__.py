"""segkit's own decoders (the others come from segmentation-models-pytorch)."""

from segkit.models.decoders.lraspp import LRASPP

__all__ = ["LRASPP"]
