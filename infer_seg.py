"""Segment images, folders, videos, cameras or streams: ``python infer_seg.py checkpoint=... input=...``.

A thin Hydra front end over :func:`segkit.inference.video.run_inference`; settings in conf/infer.yaml.
Exit status: 0 done, 2 bad input/output/settings (nothing was processed), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from segkit.config import CONF_DIR

log = logging.getLogger("infer_seg")


@hydra.main(config_path=str(CONF_DIR), config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from segkit.formats.checkpoint import CheckpointError
    from segkit.inference.video import format_summary, prepare_inference

    try:
        settings = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        log.error(
            "%s= is required (see conf/infer.yaml), e.g. checkpoint=model.onnx input=clip.mp4", exc.full_key
        )
        sys.exit(2)
    assert isinstance(settings, dict)
    try:  # every mistake in settings, input, output or model file surfaces here, before any frame
        job = prepare_inference(**settings)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    summary = job.run()
    print(format_summary(summary))
    if summary.get("summary_json"):
        print(f"summary     : {summary['summary_json']}")
    if summary.get("stop_reason") and "Ctrl-C" in summary["stop_reason"]:
        sys.exit(130)


if __name__ == "__main__":
    main()
