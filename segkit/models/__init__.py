"""Segmentation models: MobileNetV3 encoders, the LR-ASPP decoder, smp's decoders, one factory.

``create_model(name)`` builds ``conf/model/<name>.yaml``; ``build_model(arch=..., encoder=...)`` takes the
same keys as arguments. Every model maps N x 3 x H x W images to N x C x H x W logits for any H, W.
"""

from segkit.models.convert import from_torchvision_lraspp
from segkit.models.decoders.lraspp import LRASPP
from segkit.models.encoders import MobileNetV3Encoder
from segkit.models.factory import ARCHITECTURES, build_model, create_model
from segkit.models.weights import WeightsUnavailableError

__all__ = [
    "ARCHITECTURES",
    "LRASPP",
    "MobileNetV3Encoder",
    "WeightsUnavailableError",
    "build_model",
    "create_model",
    "from_torchvision_lraspp",
]
