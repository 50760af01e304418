"""Hydra-configured experiments for glove-based Korean Sign Language fingerspelling recognition."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]  # the checkout: conf/, data/, outputs/


def project_version() -> str:
    try:
        return version("signglove-exp")
    except PackageNotFoundError:
        return "unknown"
