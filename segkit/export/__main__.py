"""``python -m segkit.export checkpoint=<last.pt> output=<model.onnx> [key=value ...]`` (conf/export.yaml)."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segkit.config import CONF_DIR


def load_config(argv: list[str]) -> dict:
    """conf/export.yaml merged with ``key=value`` overrides; unknown keys are an error naming the key."""
    base = OmegaConf.load(CONF_DIR / "export.yaml")
    OmegaConf.set_struct(base, True)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments must be key=value, got {bad}")
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad option: {exc}".splitlines()[0]) from None
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    from segkit.engine.checkpoint import CheckpointError
    from segkit.export.api import export_checkpoint
    from segkit.export.verify import VerificationError

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print((CONF_DIR / "export.yaml").read_text())
        return 0
    try:
        export_checkpoint(load_config(argv))
    except (VerificationError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
