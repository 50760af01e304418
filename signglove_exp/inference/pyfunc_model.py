"""The model in MLflow's pyfunc format, logged as code (no pickle): raw samples in, jamo out.

Rows are glove samples with the model's channel columns (extra columns such as timestamps are
ignored); an optional `episode` column groups rows into episodes, else all rows are one episode.
"""

import mlflow
import pandas as pd

from signglove_exp.inference.recognizer import Recognizer


class GlovePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.rec = Recognizer.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        groups = (
            model_input.groupby("episode", sort=False) if "episode" in model_input else [("0", model_input)]
        )
        names, episodes = zip(
            *((str(k), g[self.rec.channels].to_numpy(float)) for k, g in groups), strict=True
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
