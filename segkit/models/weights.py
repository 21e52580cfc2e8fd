"""Encoder weights: ``None`` (random), ``"imagenet"`` (upstream download) or a local file path.

``imagenet`` for segkit's MobileNetV3 means torchvision's ImageNet files (the ones torchvision's own
LR-ASPP was trained from); for smp/timm encoders it means smp's/timm's download. Without a network the
download fails fast with a message that names the URL and asks for a local path instead of hanging.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

#: torchvision's ImageNet weights per segkit encoder name and ``encoder_weights`` value
TORCHVISION_WEIGHTS = {
    "mobilenetv3_large": {
        "imagenet": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        "imagenet1k_v1": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        "imagenet1k_v2": MobileNet_V3_Large_Weights.IMAGENET1K_V2,
    },
    "mobilenetv3_small": {
        "imagenet": MobileNet_V3_Small_Weights.IMAGENET1K_V1,
        "imagenet1k_v1": MobileNet_V3_Small_Weights.IMAGENET1K_V1,
    },
}
CONNECT_TIMEOUT_S = 3.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be fetched (offline); the message names the URL and the way out."""


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds if ``url``'s host cannot be reached, instead of a long hang."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise WeightsUnavailableError(_offline_message(url, exc)) from None


def _offline_message(url: str, exc: BaseException) -> str:
    return (
        f"encoder_weights='imagenet' needs a download from {url}, which failed "
        f"({type(exc).__name__}: {exc}). This machine looks offline: fetch the file on a connected machine "
        f"and pass its local path instead, e.g. "
        f"model.encoder_weights=/path/to/{Path(urlparse(url).path).name}"
    )


def is_upstream_imagenet(encoder_name: str, weights: str | os.PathLike | None) -> bool:
    """True when an smp/timm encoder should get its ImageNet weights from smp's/timm's own download."""
    return encoder_name not in TORCHVISION_WEIGHTS and str(weights).lower() == "imagenet"


@contextmanager
def smp_download_errors(encoder_name: str) -> Iterator[None]:
    """Turn a failed smp/timm (Hugging Face hub) download into a short, actionable error."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"encoder_weights='imagenet' for {encoder_name!r} needs smp's/timm's download from the "
            f"Hugging Face hub (https://huggingface.co), which failed "
            f"({type(exc).__name__}: {str(exc)[:300]}). Offline? "
            f"Fetch the weights on a connected machine and pass a local path: "
            f"model.encoder_weights=/path/to/file"
        ) from None


def load_encoder_weights(encoder: nn.Module, encoder_name: str, weights: str | os.PathLike | None) -> None:
    """Load ``weights`` into ``encoder`` (a segkit, smp or timm encoder); ``None`` keeps random init."""
    if weights is None:
        return
    key = str(weights)
    if encoder_name in TORCHVISION_WEIGHTS and key.lower() in TORCHVISION_WEIGHTS[encoder_name]:
        url = TORCHVISION_WEIGHTS[encoder_name][key.lower()].url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if not cached.is_file():
            check_reachable(url)
        try:
            state = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
        except OSError as exc:  # URLError is an OSError
            raise WeightsUnavailableError(_offline_message(url, exc)) from None
        load_state_into_encoder(encoder, state, source=url)
        return
    path = Path(key).expanduser()
    if not path.is_file():
        options = sorted(TORCHVISION_WEIGHTS.get(encoder_name, {"imagenet": None}))
        raise FileNotFoundError(
            f"encoder_weights={key!r} for encoder {encoder_name!r} is neither one of {options} "
            f"nor an existing file"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_state_into_encoder(encoder, _unwrap(state, path), source=str(path))


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in the usual containers (segkit/lightning checkpoints, DDP's ``module.``)."""
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in ("model", "state_dict", "model_state_dict") if k in state), None)
        if inner is None:
            raise ValueError(f"{path}: no state dict found (keys: {sorted(state)[:10]})")
        state = inner
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):  # a whole segkit/smp model: take its encoder
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_state_into_encoder(encoder: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy every tensor of ``state`` that fits; fail clearly unless all of the encoder got weights.

    A torchvision/timm classification file carries a classifier the encoder lacks (ignored). The one
    tolerated gap is MobileNetV3's ``reduced_tail``: ImageNet files have the full-width last stage, so
    those tensors keep their random initialisation (with a warning), as in the paper's RF2 models.
    """
    own = encoder.state_dict()
    if not any(k in own for k in state) and all(k.startswith("model.") for k in own):
        state = {f"model.{k}": v for k, v in state.items()}  # a timm file for smp's TimmUniversalEncoder
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in fits]
    tolerated: list[str] = []
    if getattr(encoder, "reduced_tail", False):
        tail = encoder.tail_start
        tolerated = [k for k in missing if k.startswith("features.") and int(k.split(".")[1]) >= tail]
    bad = [k for k in missing if k not in tolerated and not k.endswith("num_batches_tracked")]
    if bad:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad if k in state][:5]
        raise ValueError(
            f"weights from {source} do not fit encoder {type(encoder).__name__}: {len(bad)} of {len(own)} "
            f"tensors missing or of another shape (first: {bad[:5]}; shape mismatches: {shapes})"
        )
    if tolerated:
        warnings.warn(
            f"{len(tolerated)} tensors of the reduced tail keep their random init: {source} has the "
            f"full-width last stage",
            stacklevel=3,
        )
    encoder.load_state_dict(fits, strict=False)
