"""The one command-line style of segkit: Hydra ``key=value`` overrides of a config in ``conf/``.

Every ``python -m segkit.<x>`` command (and console script) is a :class:`Command`: ``--help`` prints
the command's usage and its config file (every key with its default and comment) without importing
anything heavy; arguments are composed with Hydra's override grammar (``a.b=1``, ``xs=[1,2]``,
``+new=1``, group choices such as ``model=lraspp_mobilenetv3_small``); a mistake (an unknown key, a
malformed value, a missing required key) is one line naming it and exit status 2, never a traceback.

``model=`` also takes the path of a model YAML file (a searched architecture), in every command that
has a model group, ``train_seg.py`` included (:func:`expand_file_groups`).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.config import CONF_DIR

#: config groups whose option may also be given as the path of a YAML file
FILE_GROUPS = ("model",)


class UsageError(ValueError):
    """A mistake on the command line; the message names the argument."""


def _is_yaml_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) and ("/" in value or os.sep in value or Path(value).is_file())


def expand_file_groups(argv: Sequence[str], groups: Sequence[str] = FILE_GROUPS) -> list[str]:
    """Rewrite ``model=path/to/arch.yaml`` into a Hydra group choice Hydra can compose.

    The file is linked into a private config folder (removed at exit) that is added to Hydra's search
    path, so the rest of the command line (``model.encoder_params.width_mult=0.5``) applies to it as to
    any ``conf/model`` option. Other arguments pass through unchanged.
    """
    out: list[str] = []
    extra_dirs: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in groups and _is_yaml_path(value):
            path = Path(value).expanduser()
            if not path.is_file():
                raise UsageError(f"{key}={value}: no such file")
            root = Path(tempfile.mkdtemp(prefix="segkit-conf-"))
            atexit.register(shutil.rmtree, root, True)
            (root / key.lstrip("+")).mkdir()
            name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "file"
            shutil.copyfile(path, root / key.lstrip("+") / f"{name}.yaml")
            extra_dirs.append(f"file://{root}")
            out.append(f"{key}={name}")
        else:
            out.append(arg)
    if extra_dirs:
        out.append(f"hydra.searchpath=[{','.join(extra_dirs)}]")
    return out


def compose(config_name: str, overrides: Sequence[str]) -> Any:
    """``conf/<config_name>.yaml`` with Hydra overrides applied; a mistake raises :class:`UsageError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=expand_file_groups(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's messages, cut to the line that names the argument."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    m = re.match(r"Could not override '([^']+)'", first)
    if m and "To append to your config use" in text:
        return f"unknown key '{m.group(1)}' (--help lists the keys; +{m.group(1)}=... adds a new one)"
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        options = re.findall(r"^\s+(\S+)$", text, flags=re.MULTILINE)
        hint = f": expected one of {options}" if options else ""
        return f"unknown option '{m.group(1)}'{hint}"
    if "viable alternative" in first or "mismatched input" in first or "extraneous input" in first:
        return f"malformed argument ({first}; see Hydra's override grammar)"
    return first


@dataclass
class Command:
    """A ``python -m segkit.<x>`` command: its config, its usage line and what it does with the config.

    ``run(cfg)`` gets the composed config and returns an exit status (None: 0). It raises
    :class:`UsageError` (or one of ``user_errors``) for a user's mistake: printed as one line, exit 2.
    ``legacy_flags`` maps ``--flag value`` spellings of an older interface to keys, so old command lines
    keep working.
    """

    prog: str
    config_name: str
    usage: str
    run: Callable[[Any], int | None]
    user_errors: tuple[type[BaseException], ...] = ()
    legacy_flags: dict[str, str] = field(default_factory=dict)

    def help_text(self) -> str:
        """Usage, then the config file with every key, default and comment (no heavy imports)."""
        path = CONF_DIR / f"{self.config_name}.yaml"
        lines = [f"usage: {self.prog} {self.usage}", "", f"keys ({path.name}; override any as key=value):"]
        lines.append("")
        lines.append(path.read_text().rstrip())
        groups = re.findall(r"^\s*-\s*(\w+):", path.read_text(), flags=re.MULTILINE)
        for group in (g for g in groups if (CONF_DIR / g).is_dir()):
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            lines += ["", f"{group}=<option>: {', '.join(options)} (or {group}=path/to/file.yaml)"]
        return "\n".join(lines) + "\n"

    def translate(self, argv: Sequence[str]) -> list[str]:
        """``--flag value`` / ``--flag=value`` of ``legacy_flags`` as ``key=value``; the rest unchanged."""
        out, i = [], 0
        argv = list(argv)
        while i < len(argv):
            arg = argv[i]
            name, eq, value = arg.partition("=")
            if arg.startswith("--") and name in self.legacy_flags:
                if not eq:
                    if i + 1 >= len(argv):
                        raise UsageError(f"{name} needs a value")
                    value, i = argv[i + 1], i + 1
                out.append(f"{self.legacy_flags[name]}={value}")
            elif arg.startswith("-"):
                raise UsageError(f"unknown option {arg!r}: arguments are key=value (see --help)")
            elif not eq:
                raise UsageError(f"not a key=value argument: {arg!r} (see --help)")
            else:
                out.append(arg)
            i += 1
        return out

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv`` (default ``sys.argv[1:]``), run, and return the exit status."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("-h", "--help") for a in argv):
            sys.stdout.write(self.help_text())
            return 0
        try:
            cfg = compose(self.config_name, self.translate(argv))
            status = self.run(cfg)
        except UsageError as exc:
            print(f"{self.prog}: error: {exc}", file=sys.stderr)
            return 2
        except self.user_errors as exc:
            print(f"{self.prog}: error: {exc}", file=sys.stderr)
            return 2
        return int(status or 0)
