"""The model in MLflow's pyfunc format, logged as code (no pickle): raw samples in, jamo out.

Rows are glove samples with the model's channel columns (extra columns such as timestamps are
ignored); an optional `episode` column groups rows into episodes, else all rows are one episode.
An empty episode or a non-finite value is refused (the server answers 400, naming row and column),
and so is every episode for a per_signer model that holds no person's statistics (serve its
personal model).
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from signglove_exp.inference.recognizer import Recognizer


class GlovePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.rec = Recognizer.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            self.rec.check_standalone("this served model")
        except ValueError as error:
            raise MlflowException(str(error), INVALID_PARAMETER_VALUE) from None
        if model_input.empty:
            raise MlflowException("no samples: an episode needs at least one row", INVALID_PARAMETER_VALUE)
        groups = (
            model_input.groupby("episode", sort=False) if "episode" in model_input else [("0", model_input)]
        )
        names, episodes = zip(
            *((str(k), g[self.rec.channels].to_numpy(float)) for k, g in groups), strict=True
        )
        for name, values in zip(names, episodes, strict=True):
            bad = np.argwhere(~np.isfinite(values))
            if len(bad):
                row, col = bad[0]
                raise MlflowException(
                    f"episode {name}, row {row + 1}, column {self.rec.channels[col]}: "
                    f"{values[row, col]} is not a finite number",
                    INVALID_PARAMETER_VALUE,
                )
        preds = self.rec.predict_batch(list(episodes))
        return pd.DataFrame(
            {
                "episode": list(names),
                "jamo": [p.jamo for p in preds],
                "confidence": [p.confidence for p in preds],
                "top3": [" ".join(f"{j}:{q:.3f}" for j, q in p.top(3)) for p in preds],
            }
        )


mlflow.models.set_model(GlovePyfunc())
