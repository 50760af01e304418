"""Hydra-configured experiments for glove-based Korean Sign Language fingerspelling recognition."""

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The Hydra configs: conf/ at the top of a checkout, signglove_exp/conf inside an installed wheel;
# --config-dir adds a folder of your own.
CONF_DIR = next(
    (d for d in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf") if d.is_dir()), PACKAGE_DIR / "conf"
)
BUNDLED_DIR = PACKAGE_DIR / "bundled"  # the episode archive, the pretrained model, upstream's checkpoints


def default_outputs() -> Path:
    """outputs/ in the folder a command runs from: run folders, the MLflow store, caches."""
    return Path.cwd() / "outputs"


def project_version() -> str:
    try:
        return version("signglove-exp")
    except PackageNotFoundError:
        return "unknown"


def registrar(table: dict):
    """The decorator of a registry: `strategy = registrar(STRATEGIES)`, then `@strategy("name")` on a
    function adds it under that name."""

    def named(name: str):
        def register(fn):
            table[name] = fn
            return fn

        return register

    return named


def command(main) -> None:
    """Run a command's `main`: bad input (a ValueError or FileNotFoundError naming the file or setting)
    is one line on stderr and exit status 1, not a traceback; HYDRA_FULL_ERROR=1 shows the traceback."""

    from signglove_exp.console import quiet

    quiet()
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"Error: {error}") from None
