"""What a command changes in the process it owns: quieter libraries.

Importing the package changes nothing global; each command calls `quiet()` once as it starts, so a
notebook or a program that imports signglove_exp keeps its own logging, warnings and environment.
"""

from __future__ import annotations

import logging
import os
import warnings

# Lightning's banners: not what a user needs
LIGHTNING_NOISE = (
    "Tip:",
    "available:",
    "Restoring states from",
    "Loaded model weights from",
    "was configured so 100%",
)


def _lightning_filter(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in LIGHTNING_NOISE)


def quiet() -> None:
    """Library chatter a command's user cannot act on, silenced; idempotent."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per download is noise
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # our lines say where runs are
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # a new store's migration steps
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # its note on validating the input example
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _lightning_filter not in lightning.filters:
        lightning.addFilter(_lightning_filter)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning 2.6 on torch 2.13, not ours to fix
