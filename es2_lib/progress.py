"""Plain-text progress bars for long loops; `$ES2_PROGRESS_INTERVAL` (seconds) spaces out their updates so
notebooks executed by papermill keep a few lines, not thousands."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None, desc: str, total: int | None = None) -> tqdm:
    """Wrap `iterable` in a text progress bar written to stderr (None: a bar of `total` steps to update by hand)."""
    interval = float(os.environ.get("ES2_PROGRESS_INTERVAL", "1"))
    return tqdm(iterable, desc=desc, total=total, mininterval=interval, maxinterval=max(interval, 10.0),
                ascii=True, dynamic_ncols=False, ncols=100, file=sys.stderr)
