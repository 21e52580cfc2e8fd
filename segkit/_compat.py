"""Small compatibility shims for third-party code segkit calls (kept in one place so they are easy to drop).

cityscapesscripts 2.3.0 still calls ``np.in1d``, which numpy 2.4 removed; ``np.isin`` is the documented
replacement with the same semantics for the flat arrays those scripts pass.
"""

from __future__ import annotations

import numpy as np


def patch_cityscapesscripts() -> None:
    """Restore ``np.in1d`` (as ``np.isin`` on raveled input) if this numpy lacks it; idempotent."""
    if not hasattr(np, "in1d"):

        def in1d(ar1, ar2, assume_unique=False, invert=False):  # noqa: ANN001, ANN202 - numpy signature
            return np.isin(np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique, invert=invert)

        np.in1d = in1d  # type: ignore[attr-defined]
