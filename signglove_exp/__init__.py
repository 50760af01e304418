"""Hydra-configured experiments for glove-based Korean Sign Language fingerspelling recognition."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]  # the checkout: conf/, data/, outputs/


def project_version() -> str:
    try:
        return version("signglove-exp")
    except PackageNotFoundError:
        return "unknown"


def command(main) -> None:
    """Run a command's `main`: bad input (a ValueError or FileNotFoundError naming the file or setting)
    is one line on stderr and exit status 1, not a traceback; HYDRA_FULL_ERROR=1 shows the traceback."""
    import os

    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"Error: {error}") from None
