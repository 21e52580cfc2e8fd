"""Rebuild the model a segkit checkpoint describes, from its ``model_config`` alone.

Every architecture, searched or shrunk ones included, is an ordinary model config (a MobileNetV3 block
table in ``encoder_params.blocks``), so this needs no search code. Checkpoints written before block tables
existed stored a shrunk model as the base config plus a ``search`` entry of per-block widths; those are
translated into a table when read.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from segkit.formats.checkpoint import CheckpointError, load_checkpoint
from segkit.models.encoders import SEGKIT_ENCODERS, paper_table
from segkit.models.factory import build_model

#: the key under which checkpoints written before block tables kept a searched model's widths
LEGACY_SEARCH_KEY = "search"


def checkpoint_model_config(ckpt: Mapping[str, Any], source: str | os.PathLike = "") -> dict[str, Any]:
    """The checkpoint's model config as ``build_model`` keywords (legacy ``search`` widths translated)."""
    config = {k: v for k, v in copy.deepcopy(dict(ckpt["model_config"])).items() if k != "_target_"}
    search = ckpt.get(LEGACY_SEARCH_KEY)
    if isinstance(search, Mapping) and "expanded_channels" in search:
        config = _legacy_table(config, search, source)
    return config


def _legacy_table(
    config: dict[str, Any], search: Mapping[str, Any], source: str | os.PathLike
) -> dict[str, Any]:
    encoder = config.get("encoder")
    if encoder not in SEGKIT_ENCODERS:
        raise CheckpointError(
            f"{source}: a 'search' entry needs a segkit MobileNetV3 encoder, got {encoder!r}"
        )
    params = dict(config.get("encoder_params") or {})
    variant = SEGKIT_ENCODERS[encoder][1]["variant"]
    stem, rows, last = paper_table(
        variant,
        width_mult=float(params.pop("width_mult", 1.0)),
        reduced_tail=bool(params.pop("reduced_tail", False)),
    )
    expanded = list(search["expanded_channels"])
    outs = list(search.get("out_channels") or [r[2] for r in rows])
    if len(expanded) != len(rows) or len(outs) != len(rows):
        raise CheckpointError(
            f"{source}: 'search' lists {len(expanded)} expansions for a {len(rows)}-block {encoder}"
        )
    for row, e, o in zip(rows, expanded, outs):
        row[1], row[2] = int(e), int(o)
    params.update(blocks=rows, stem_channels=stem, last_channels=last, width_mult=1.0, reduced_tail=False)
    return {**config, "encoder_params": params}


def build_model_from_checkpoint(
    ckpt: Mapping[str, Any] | str | os.PathLike, *, use_ema: bool = False
) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (EMA weights if asked and present)."""
    source: str | os.PathLike = "checkpoint"
    if not isinstance(ckpt, Mapping):
        source = ckpt
        ckpt = load_checkpoint(ckpt)
    config = checkpoint_model_config(ckpt, source)
    # The state dict below overwrites every weight: never fetch pretrained encoder weights again.
    config["encoder_weights"] = None
    try:
        model = build_model(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its model_config does not build a model ({exc})") from None
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{source}: its weights do not fit its model_config ({first})") from None
    return model.eval()
