"""Atomic file writes: a reader, or a resumed run, never sees half a file."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any


def write_atomically(
    path: pathlib.Path, write: Callable[[Any], None], binary: bool = False
) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it to `path`."""
    with tempfile.NamedTemporaryFile(
        "wb" if binary else "w", dir=path.parent, suffix=".tmp", delete=False
    ) as f:
        write(f)
    os.replace(f.name, path)


def write_json(path: pathlib.Path, payload: dict) -> None:
    """Writes JSON atomically (write_atomically)."""
    write_atomically(path, lambda f: json.dump(payload, f, indent=2))
