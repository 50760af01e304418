"""Upstream's unlabelled checkpoints: identified from weights, imported, and scoring what upstream scored."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from signglove_exp import BUNDLED_DIR, describe, legacy
from signglove_exp.card import load_model
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.upstream.identify import identify
from signglove_exp.upstream.scaler import read_scaler_pickle

LEGACY = BUNDLED_DIR / "legacy"
# file -> (architecture, accuracy on upstream's exact test split, as the legacy README gives it)
EXPECTED = {
    "best_model-ms3dgru_best.ckpt": ("ms3d_gru", 0.9913),
    "epoch92-valloss0.04.ckpt": ("gru", 0.9896),
    "epoch82-valloss0.05.ckpt": ("ms3d_stacked_gru", 0.9792),
    "epoch68-valloss0.19.ckpt": ("stacked_gru", 0.9255),
}
CHANNELS = ["flex1", "flex2", "flex3", "flex4", "flex5", "pitch", "roll", "yaw"]


@pytest.mark.parametrize("name", EXPECTED)
def test_architecture_is_told_from_weights_alone(name):
    sd = torch.load(LEGACY / name, map_location="cpu", weights_only=True)["state_dict"]
    hparams = identify(sd)
    assert hparams["name"] == EXPECTED[name][0]
    assert f"architecture: {EXPECTED[name][0]} " in describe.main([str(LEGACY / name)])


def test_legacy_gru_keeps_its_input_projection():
    sd = torch.load(LEGACY / "epoch92-valloss0.04.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert identify(sd)["input_projection"] == 128


def test_unknown_weights_get_an_error_saying_what_was_found():
    with pytest.raises(
        ValueError, match=r"no known architecture signature; found 2 tensors: lstm.weight_ih_l0"
    ):
        identify({"lstm.weight_ih_l0": torch.zeros(4, 8), "fc.weight": torch.zeros(24, 4)})


def test_upstream_scaler_is_read_without_running_pickle_code():
    scaler = read_scaler_pickle(LEGACY / "scaler.pkl", CHANNELS)
    assert scaler["n_samples_seen"] == 2884 * 87 and len(scaler["mean"]) == 8


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    evil = tmp_path / "scaler.pkl"
    evil.write_bytes(pickle.dumps(_Exploit()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=r"scaler.pkl: not a plain pickled StandardScaler .*refusing to load"
    ):
        read_scaler_pickle(evil, CHANNELS)
    assert not (tmp_path / "pwned").exists()


def test_imports_reproduce_upstreams_accuracies_and_carry_their_mode(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    results = legacy.main(["--tracking-uri", uri, "--out", str(tmp_path / "converted")])
    assert [p.name for p in (tmp_path / "cwd").iterdir()] == ["outputs"]  # no mlruns/ or mlflow.db here
    assert not (tmp_path / "cwd" / "outputs" / "mlartifacts").exists()  # run files go beside the store
    assert any((tmp_path / "mlartifacts").rglob("confusion_matrix.png"))
    assert {r["file"]: (r["model"], round(r["eval/acc"], 4)) for r in results} == EXPECTED
    client = MlflowClient(uri)
    for r in results:
        run = client.get_run(r["run_id"])
        assert (
            run.data.tags["signglove.kind"] == "legacy-import"
            and run.data.params["model.readout"] == "upstream"
        )
    converted = next(Path(tmp_path / "converted").rglob("gru-epoch92*.ckpt"))
    net, card = load_model(converted)
    assert card.padding == {"value": 1.0, "units": "raw"} and card.readout == "upstream"
    assert Recognizer.from_torch(net, card).card.scaler["n_samples_seen"] == 2884 * 87
    assert card.lineage["source"] == "upstream KLP-SignGlove epoch92-valloss0.04.ckpt"
    assert "architecture: gru (49,816 trainable parameters)" in describe.main([str(converted)])
