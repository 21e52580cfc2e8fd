"""Segmentation models: MobileNetV3 encoders from block tables, the LR-ASPP decoder, smp's decoders, one
factory.

``create_model(name)`` builds ``conf/model/<name>.yaml`` (or a model YAML file); ``build_model(arch=...,
encoder=...)`` takes the same keys as arguments; ``build_model_from_checkpoint(path)`` rebuilds a saved
model. Every model maps N x 3 x H x W images to N x C x H x W logits for any H, W.
"""

from segkit.models.convert import from_torchvision_lraspp
from segkit.models.decoders.lraspp import LRASPP
from segkit.models.encoders import BlockSpec, MobileNetV3Encoder
from segkit.models.factory import ARCHITECTURES, architecture_config, build_model, create_model
from segkit.models.from_checkpoint import build_model_from_checkpoint
from segkit.models.weights import WeightsUnavailableError

__all__ = [
    "ARCHITECTURES",
    "LRASPP",
    "BlockSpec",
    "MobileNetV3Encoder",
    "WeightsUnavailableError",
    "architecture_config",
    "build_model",
    "build_model_from_checkpoint",
    "create_model",
    "from_torchvision_lraspp",
]
