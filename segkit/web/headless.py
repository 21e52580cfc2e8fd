"""Headless Chromium for the web app's tests and benchmark, through Playwright (a dev dependency).

The browser is the system's Chromium (Debian's ``chromium`` package), not one Playwright downloads, with
the flags that keep it from reaching out to the network at start-up (it would hang without them here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

#: Debian's chromium; SEGKIT_CHROMIUM overrides it.
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # a camera that draws a test pattern, allowed without a prompt (the page's webcam mode)
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)
INSTALL_HINT = (
    "install it with `apt-get install chromium` (Debian) or set SEGKIT_CHROMIUM to a Chromium binary"
)


class BrowserUnavailable(RuntimeError):
    """Chromium or Playwright is missing; the message says how to install it."""


def chromium_path() -> Path:
    """The Chromium binary to drive; BrowserUnavailable with the install command when there is none."""
    env = os.environ.get("SEGKIT_CHROMIUM")
    for cand in (
        [env] if env else [DEFAULT_CHROMIUM, shutil.which("chromium"), shutil.which("chromium-browser")]
    ):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    where = env or DEFAULT_CHROMIUM
    raise BrowserUnavailable(f"headless Chromium not found at {where}: {INSTALL_HINT}")


def start_playwright() -> Any:
    """A started sync Playwright (call ``.stop()``); BrowserUnavailable when the package is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserUnavailable(
            "the playwright package is missing: pip install -c requirements.lock -e '.[dev]'"
        ) from None
    return sync_playwright().start()


def launch_chromium(playwright: Any, user_data_dir: str | os.PathLike) -> Any:
    """A headless Chromium context with a fresh profile in ``user_data_dir`` (call ``.close()``)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=str(chromium_path()),
        headless=True,
        args=list(CHROMIUM_ARGS),
        viewport={"width": 1280, "height": 760},
    )
