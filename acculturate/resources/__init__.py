"""Files shipped inside the package: data sets (with their licenses) and default configs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def resource_path(relative: str) -> Path:
    """Absolute path of a shipped resource, e.g. ``resource_path("data/blend/blend_saq_en.jsonl")``."""
    path = ROOT / relative
    if not path.exists():
        raise FileNotFoundError(f"shipped resource {relative!r} not found under {ROOT}")
    return path
