"""Hydra-configured experiments for glove-based Korean Sign Language fingerspelling recognition."""

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]  # the checkout: conf/, data/, outputs/
