"""LR-ASPP ("Searching for MobileNetV3", Sec. 6.3), split like smp's decoders: decoder and model."""

from segkit.models.decoders.lraspp.decoder import LRASPPDecoder, LRASPPHead, PaperAvgPool
from segkit.models.decoders.lraspp.model import LRASPP

__all__ = ["LRASPP", "LRASPPDecoder", "LRASPPHead", "PaperAvgPool"]
