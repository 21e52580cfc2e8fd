"""``python -m segkit.export checkpoint=<last.pt> output=<model.onnx> [key=value ...]`` (conf/export.yaml).

Exit status: 0 every file written and verified; 1 a verification failed (the report says by how much);
2 a mistake in the arguments, the checkpoint or a dataset path (nothing verified was written).
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import OmegaConf

from segkit.cli import Command, compose
from segkit.formats.description import ModelFileError


def load_config(argv: list[str]) -> dict:
    """conf/export.yaml composed with ``key=value`` overrides (an unknown key is a UsageError)."""
    return OmegaConf.to_container(compose("export", argv), resolve=True)  # type: ignore[return-value]


def _run(cfg: Any) -> int:
    from segkit.export.api import export_checkpoint  # after parsing: --help and typos stay fast
    from segkit.export.verify import VerificationError

    try:
        export_checkpoint(OmegaConf.to_container(cfg, resolve=True))
    except VerificationError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


COMMAND = Command(
    prog="python -m segkit.export",
    config_name="export",
    usage="checkpoint=<.pt> output=<.onnx> [quantize=int8] [mobile=executorch] [key=value ...]",
    run=_run,
    user_errors=(ModelFileError, ValueError, FileNotFoundError),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    sys.exit(main())
