"""Sample photos shipped inside the package, for the demo, the tests and the benchmarks.

They are the example photos of the Depth Anything V2 repository (``assets/examples``,
Apache-2.0), downscaled to 1024 pixels wide; ``data/README.md`` says where each came
from. They are found relative to this module, so a clone or an installed wheel
anywhere on disk has them. They carry no depth ground truth: use them as camera frames.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "data"


def sample_photos() -> list[Path]:
    """Every sample photo, sorted by name; a missing data folder is an error, never an empty list."""
    photos = sorted(SAMPLE_DIR.glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no sample photos in {SAMPLE_DIR}: the package is incomplete (reinstall dronedepth)")
    return photos


def sample_photo(name: str = "demo01.jpg") -> Path:
    """One sample photo by file name."""
    path = SAMPLE_DIR / name
    if not path.is_file():
        known = ", ".join(p.name for p in sample_photos())
        raise FileNotFoundError(f"no sample photo {name!r} in {SAMPLE_DIR} (have: {known})")
    return path
