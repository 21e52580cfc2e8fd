"""segkit works installed from a wheel, from any folder: the configs travel as package data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # builds and installs a wheel


def test_a_wheel_installed_elsewhere_builds_models_from_its_own_configs(tmp_path: Path) -> None:
    # built from a copy of what the wheel is made of, so the build leaves nothing in the repository
    source = tmp_path / "source"
    shutil.copytree(REPO / "segkit", source / "segkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("segkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segkit/conf/model/lraspp_mobilenetv3_large.yaml" in names
    assert "segkit/conf/config.yaml" in names and "segkit/conf/augment/cityscapes.yaml" in names

    # installed into a folder of its own (dependencies from this environment), used from another folder
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", target, wheel],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = (
        "import segkit, json\n"
        "m = segkit.create_model('lraspp_mobilenetv3_large')\n"
        "from segkit.config import CONF_DIR\n"
        "print(json.dumps([segkit.__file__, str(CONF_DIR), sum(p.numel() for p in m.parameters())]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=outside, timeout=600, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    module, conf_dir, params = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(module).is_relative_to(target) and Path(conf_dir).is_relative_to(target)  # not the repo's
    assert params == 1_746_878  # the paper's LR-ASPP MobileNetV3-Large (RF2): 1.75 M
