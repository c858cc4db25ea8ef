"""Where the static client (web/) and console templates (admin/) are found."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """`web` or `admin`: inside an installed wheel (gochat/_web), else the source tree."""
    for candidate in (_PACKAGE / f"_{name}", _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"gochat's {name}/ folder is missing from this installation")
