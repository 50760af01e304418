"""One model card, read the same from a checkpoint, an ONNX file and a pyfunc model; runs that start
from a trained model (init_from) with part of it frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from signglove_exp.card import CARD_VERSION, read_card, read_checkpoint
from signglove_exp.inference.onnx_export import export_onnx
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.tracking.queries import download_checkpoint
from signglove_exp.training.train import train
from tests.conftest import compose_config, episodes_root

PREVIOUS_RELEASE = Path(__file__).parent / "fixtures" / "card-v1-gru.ckpt"  # written by release 0.1


def test_a_checkpoint_of_the_previous_release_still_loads_and_recognises(tmp_path):
    assert "card_version" not in torch.load(PREVIOUS_RELEASE, weights_only=True)["signglove"]
    card = read_card(PREVIOUS_RELEASE)
    assert card.card_version == CARD_VERSION and card.name == "gru" and card.lineage == {}
    assert len(card.classes) == 24 and card.readout == "last_real" and card.scaler["n_samples_seen"] > 0
    root = Path(compose_config().data.root)
    episode = next((root / "unified_JY").rglob("ㅎ/*/episode_*.csv"))
    rec = Recognizer.load(PREVIOUS_RELEASE)
    assert rec.predict_files([episode])[0].jamo == "ㅎ"
    onnx_card = read_card(export_onnx(rec.net, rec.card, tmp_path / "m.onnx"))
    assert onnx_card == card


def test_the_same_card_is_in_the_checkpoint_the_onnx_file_and_the_pyfunc_model(cli_run, tmp_path):
    client, run, tmp, _ = cli_run
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    card, _, _ = read_checkpoint(download_checkpoint(run.info.run_id, uri, tmp_path / "ckpt"))
    assert card.card_version == CARD_VERSION and card.lineage == {}
    assert card.config["seed"] == 7 and card.data_fingerprint == run.data.tags["data.fingerprint"]
    rec = Recognizer.load(run.info.run_id, uri)
    assert read_card(export_onnx(rec.net, rec.card, tmp_path / "model.onnx")) == card
    pyfunc = download_checkpoint(f"runs:/{run.info.run_id}/model", uri).parents[
        1
    ]  # .../model/artifacts/x.ckpt
    assert read_card(pyfunc) == card
    assert not list(Path(pyfunc).rglob("*.ttf"))  # the figures' font does not travel with the model


def fine_tune(cli_run, tmp_path, cache_dir, *overrides):
    _, source, tmp, _ = cli_run
    return compose_config(
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"data.cache_dir={cache_dir}",
        f"data.root={episodes_root()}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"init_from={source.info.run_id}",
        "trainer=debug",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "tracking.log_model=false",
        *overrides,
    )


def test_init_from_a_run_with_the_head_trained_changes_only_the_head(cli_run, tmp_path, cache_dir):
    client, source, tmp, _ = cli_run
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = train(fine_tune(cli_run, tmp_path, cache_dir, "finetune.train=head", "seed=11"))
    before_card, before, _ = read_checkpoint(download_checkpoint(source.info.run_id, uri, tmp_path / "src"))
    after_card, after, _ = read_checkpoint(result.best_checkpoint)
    head = [k for k in after if k.startswith("output_layers.")]
    assert head and len(head) < len(after)
    for k in after:
        assert torch.equal(after[k], before[k]) != (k in head), k  # frozen: identical; head: trained
    assert after_card.scaler == before_card.scaler  # the source's scaler, not one refitted here
    assert after_card.lineage["source_run"] == source.info.run_id
    assert after_card.lineage["adapted"] == "fine-tuned, finetune.train=head"
    run = client.get_run(result.run_id)
    assert run.data.tags["signglove.source_run"] == source.info.run_id
    assert run.data.tags["signglove.init_from"] == source.info.run_id
    assert (
        int(run.data.params["model.n_trained"])
        == sum(after[k].numel() for k in head)
        < int(run.data.params["model.n_params"])
    )
    # Started again in its folder (a requeue, resume=): the same run, though model= names another
    # architecture, since a fine-tune's architecture comes from its source.
    again = fine_tune(cli_run, tmp_path, cache_dir, "finetune.train=head", "seed=11", "model=ms3d_gru")
    again_result = train(again)
    assert again_result.start.kind == "finished" and again_result.run_id == result.run_id


def test_a_source_that_does_not_fit_the_data_is_a_clear_error(cli_run, tmp_path, cache_dir):
    with pytest.raises(ValueError, match=r"init_from=\w+: channels \[flex1.*roll\] differ from the model's"):
        train(fine_tune(cli_run, tmp_path, cache_dir, "data=no_yaw"))
    with pytest.raises(ValueError, match=r"finetune.train: gru_layers names no parameter of this network"):
        train(fine_tune(cli_run, tmp_path, cache_dir, "finetune.train=[gru_layers]"))
    with pytest.raises(FileNotFoundError, match=r"init_from=nowhere/model.ckpt: no such checkpoint file"):
        train(fine_tune(cli_run, tmp_path, cache_dir, "init_from=nowhere/model.ckpt"))


def test_optimized_metric_is_a_validation_number_and_test_is_refused(cli_run, make_cfg):
    client, run, _, _ = cli_run
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert run.data.metrics["best/val/loss"] == pytest.approx(min(m.value for m in history), abs=1e-6)
    with pytest.raises(ValueError, match="optimized_metric=test/acc: must be a validation metric"):
        train(make_cfg("optimized_metric=test/acc"))
