"""A checkpoint logged as an MLflow pyfunc model: the model's card in its metadata, the scaler inside
the checkpoint, and only the code that loads and runs it (no bundled data, configs or figures).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import infer_signature
from mlflow.types import ColSpec

from signglove_exp.card import CARD_KEY, ModelCard
from signglove_exp.tracking.store import global_tracking_uri

PYFUNC_REQUIREMENTS = ["torch==2.13.0", "pytorch-lightning>=2.6,<2.7", "numpy", "scikit-learn", "pandas"]


def log_pyfunc(uri: str, run_id: str, checkpoint: Path, example_csv: Path, card: ModelCard) -> str:
    """Log the checkpoint as an MLflow pyfunc model (scaler inside) with a signature and an example.

    Column types follow a real episode file (flex sensors are integer ADC readings). The card rides in
    the model's metadata; the package's Python files ride along, nothing else (about 0.3 MB: no
    bundled episodes or checkpoints, configs or fonts).
    """
    example = pd.read_csv(example_csv)[card.channels]
    with warnings.catch_warnings():  # the integer columns are meant, so MLflow's hint about them is noise
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(
            example,
            pd.DataFrame({"episode": ["0"], "jamo": ["ㄱ"], "confidence": [1.0], "top3": ["ㄱ:1.000"]}),
        )
        signature.inputs.inputs.append(ColSpec("string", "episode", required=False))
        package = Path(__file__).resolve().parents[1]
        with global_tracking_uri(uri), tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            code = Path(tmp) / package.name
            for source in package.rglob("*.py"):
                target = code / source.relative_to(package)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(package / "inference" / "pyfunc_model.py"),
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(code)],
                signature=signature,
                input_example=example,
                pip_requirements=PYFUNC_REQUIREMENTS,
                metadata={CARD_KEY: card.to_dict()},
            )
    return info.model_uri
