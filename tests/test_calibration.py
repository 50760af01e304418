"""Signer-robust preprocessing, augmentation and few-shot calibration, on the real episodes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from signglove_exp import calibrate, data, recognize
from signglove_exp import evaluate as evaluate_command
from signglove_exp.card import read_checkpoint
from signglove_exp.inference.onnx_export import export_onnx
from signglove_exp.inference.pyfunc_model import GlovePyfunc
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.models import batched_logits, build_model, last_linear
from signglove_exp.training.adapt import adapt, evaluate, metric_name
from signglove_exp.training.augment import Augmenter
from signglove_exp.training.module import Classifier, supervised_contrastive
from signglove_exp.training.train import train
from tests.conftest import compose_config, episodes_root, run_sweep

PRETRAINED = Path(__file__).parents[1] / "signglove_exp" / "bundled" / "pretrained" / "gru-reference.ckpt"
DEFAULT_METHOD = "renorm+finetune_all:epochs=100:lr=0.003"  # calibration.default_method


@pytest.fixture(scope="module")
def corpus(cache_dir):
    cfg = compose_config(f"data.root={episodes_root()}", f"data.cache_dir={cache_dir}")
    return data.load_corpus(
        episodes_root(), list(cfg.data.classes), list(cfg.data.channels), 10, "unified_", "skip", cache_dir
    )


def signer_episodes(corpus, signer: str):
    eps = [e for e in corpus.episodes if e.signer == signer and e.reason is None]
    return [e.values for e in eps], np.array([e.label for e in eps])


def test_shots_are_drawn_per_class_the_same_for_a_seed_and_never_tested(corpus):
    _, labels = signer_episodes(corpus, "JY")
    calib, rest = data.draw_shots(labels, 3, seed=5)
    again, _ = data.draw_shots(labels, 3, seed=5)
    other, _ = data.draw_shots(labels, 3, seed=6)
    assert np.array_equal(calib, again) and not np.array_equal(calib, other)
    assert not set(calib) & set(rest) and len(calib) + len(rest) == len(labels)
    assert np.bincount(labels[calib]).tolist() == [3] * 24


def test_per_signer_statistics_use_no_labels_and_only_that_signers_episodes(cache_dir):
    def prepared(*overrides):
        cfg = compose_config(
            f"data.root={episodes_root()}", f"data.cache_dir={cache_dir}", "split=by_signer", *overrides
        )
        return data.prepare(cfg.data, cfg.split)

    per_signer = prepared("data.normalize=per_signer", "split.test_signer=JY")
    eps = per_signer.corpus.episodes
    jy = [i for i in per_signer.parts["test"]]
    stats = data.fit_scaler([eps[i].values for i in jy], per_signer.corpus.channels, 87)
    x, _ = data.to_arrays([eps[i].values for i in jy], stats, 87, {"value": 0.0, "units": "scaled"})
    np.testing.assert_array_equal(per_signer.arrays["test"][0], x)  # JY's statistics, from JY alone
    assert not np.allclose(per_signer.arrays["test"][0], prepared("split.test_signer=JY").arrays["test"][0])
    # labels are the class folders' order: permuting it relabels every episode, and changes no input
    classes = "[" + ",".join(f"'{c}'" for c in reversed(compose_config().data.classes)) + "]"
    relabelled = prepared("data.normalize=per_signer", "split.test_signer=JY", f"data.classes={classes}")
    by_path = {eps[i].path: row for i, row in zip(jy, per_signer.arrays["test"][0], strict=True)}
    other = relabelled.corpus.episodes
    for i, row in zip(relabelled.parts["test"], relabelled.arrays["test"][0], strict=True):
        np.testing.assert_array_equal(row, by_path[other[i].path])


def test_transforms_wrap_angles_and_name_the_features():
    episode = np.array([[800.0, 170.0, -170.0], [810.0, -175.0, 175.0]])
    names = ["flex1", "roll", "yaw"]
    (rel,), same = data.apply_transforms([episode], names, {"relative": ["yaw"]})
    assert same == names and rel[1, 2] == pytest.approx(-15.0) and rel[0, 2] == 0.0  # 175 - -170, wrapped
    (out,), features = data.apply_transforms([episode], names, {"sincos": ["roll"], "derivative": ["flex1"]})
    assert features == ["flex1", "yaw", "sin_roll", "cos_roll", "d_flex1"]
    rad = np.deg2rad([170.0, -175.0])
    np.testing.assert_allclose(out[:, 2:4], np.stack([np.sin(rad), np.cos(rad)], axis=1))
    assert out[:, 4].tolist() == [0.0, 10.0]
    with pytest.raises(ValueError, match="data.transforms.relative: pitch not among the features"):
        data.apply_transforms([episode], names, {"relative": ["pitch"]})


def test_augmentation_is_seeded_keeps_padding_and_mixes_targets():
    scaler = {
        "channels": ["flex1", "pitch", "roll"],
        "mean": [800.0, 10.0, -40.0],
        "scale": [30.0, 25.0, 60.0],
    }
    padding = {"value": 0.0, "units": "scaled"}
    strengths = {"jitter": 0.1, "gain": 0.2, "offset": 0.3, "rotate": 10.0, "drift": 5.0, "sensor_fault": 0.5}
    strengths |= {"time_warp": 0.2, "mixup": 0.4}
    aug = Augmenter(strengths, 7, scaler["channels"], scaler, padding)
    x, lengths = torch.randn(16, 87, 3), torch.randint(20, 81, (16,))
    x[torch.arange(87) >= lengths.unsqueeze(1)] = 0.0
    y = torch.arange(16) % 4
    first, again = aug(x, lengths, y, 4, 0, 3), aug(x, lengths, y, 4, 0, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], aug(x, lengths, y, 4, 1, 3)[0])  # another epoch, other draws
    xa, la, ya = first
    assert (xa[torch.arange(87) >= la.unsqueeze(1)] == 0).all() and (la <= 87).all()
    assert torch.allclose(ya.sum(1), torch.ones(16)) and (ya.max(1).values < 1).any()
    preset = compose_config("augment=signer").augment
    built = Augmenter(dict(preset), 0, scaler["channels"], scaler, padding)
    assert [name for name, _ in built.steps] == ["jitter", "gain", "offset", "rotate", "time_warp"]
    failing = Augmenter({"sensor_fault": 1.0}, 0, scaler["channels"], scaler, padding)(
        x, lengths, y, 4, 0, 0
    )[0]
    for got, was, n in zip(failing, x, lengths, strict=True):  # flex1 reads one value; the IMU as it was
        assert got[:n, 0].unique().numel() == 1 and not torch.equal(got[:n, 0], was[:n, 0])
        assert torch.equal(got[:n, 1:], was[:n, 1:])
    drifted = Augmenter({"drift": 5.0}, 0, scaler["channels"], scaler, padding)(x, lengths, y, 4, 0, 0)[0]
    moved = drifted - x
    assert (moved[:, 0, :] == 0).all()  # the drift starts at the first sample
    assert (moved[:, :, 0] == 0).all()  # and leaves the flex sensor alone
    with pytest.raises(ValueError, match="augment.jitter=-1"):
        Augmenter({"jitter": -1}, 0, scaler["channels"], scaler, padding)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log:UserWarning")  # a step outside a Trainer
def test_the_supervised_contrastive_term_is_khoslas_loss_and_refuses_mixed_labels():
    gen = torch.Generator().manual_seed(0)
    e, t = torch.randn(12, 5, generator=gen, dtype=torch.float64), 0.2
    y = torch.tensor([0, 0, 1, 1, 1, 2] * 2)
    z = e / e.norm(dim=1, keepdim=True)
    terms = []
    for i in range(len(z)):  # the paper's sum, anchor by anchor
        others = [a for a in range(len(z)) if a != i]
        below = sum(torch.exp(z[i] @ z[a] / t) for a in others)
        positives = [p for p in others if y[p] == y[i]]
        terms += [-sum(torch.log(torch.exp(z[i] @ z[p] / t) / below) for p in positives) / len(positives)]
    torch.testing.assert_close(supervised_contrastive(e, y, t), torch.stack(terms).mean())
    alone = e.clone().requires_grad_()  # every episode alone in its class: nothing to pull, no NaN
    supervised_contrastive(alone, torch.arange(12), t).backward()
    assert (alone.grad == 0).all()
    tight = torch.cat([torch.ones(6, 5), -torch.ones(6, 5)]).double() + 0.01 * e
    assert supervised_contrastive(tight, torch.tensor([0] * 6 + [1] * 6), t) < supervised_contrastive(e, y, t)
    net = build_model("gru", n_channels=3, n_classes=3)  # the term is added to cross-entropy in training
    x, lengths = torch.randn(12, 20, 3, generator=gen), torch.full((12,), 20)
    step = Classifier(net, None, None, SimpleNamespace(classes=["a", "b", "c"]), supcon=0.5, temperature=t)
    torch.manual_seed(0)
    loss = step.training_step((x, lengths, y), 0)
    torch.manual_seed(0)
    seen = []
    last_linear(net).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    expected = nn.functional.cross_entropy(net(x, lengths), y) + 0.5 * supervised_contrastive(seen[0], y, t)
    torch.testing.assert_close(loss, expected)
    scaler = {"channels": ["flex1"], "mean": [0.0], "scale": [1.0]}
    mixing = Augmenter({"mixup": 0.4}, 0, ["flex1"], scaler, {"value": 0.0, "units": "scaled"})
    with pytest.raises(ValueError, match=r"loss.supcon=0.5 .* augment.mixup=0.4 .* set one of them to 0"):
        Classifier(nn.Linear(1, 2), None, None, SimpleNamespace(classes=["a", "b"]), mixing, supcon=0.5)


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory, cache_dir):
    """A short real run with transforms, per-episode normalisation, augmentation and the few-shot grid."""
    tmp = tmp_path_factory.mktemp("robust")
    cfg = compose_config(
        f"data.root={episodes_root()}",
        f"data.cache_dir={cache_dir}",
        f"paths.outputs={tmp / 'outputs'}",
        f"paths.output_dir={tmp / 'run'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.log_model=false",
        "split=by_signer",
        "split.test_signer=JY",
        "data.transforms.relative=[yaw]",
        "data.transforms.derivative=[flex1,flex2]",
        "data.normalize=per_episode",
        "augment.gain=0.1",
        "augment.time_warp=0.1",
        "loss.supcon=0.5",
        "trainer=debug",
        "calibration.shots=[2]",
        "calibration.draws=2",
        "calibration.methods=[prototype,renorm+finetune_head]",
        "calibration.epochs=3",
    )
    return cfg, train(cfg), tmp


def test_a_robust_model_applies_its_preprocessing_the_same_in_recognition_and_onnx(robust_run, tmp_path):
    cfg, result, _ = robust_run
    card, state, _ = read_checkpoint(result.best_checkpoint)
    assert card.preprocess["features"][-2:] == ["d_flex1", "d_flex2"] and card.model["n_channels"] == 10
    assert card.preprocess["normalize"] == "per_episode"
    prepared = result.prepared
    x, lengths, y = prepared.arrays["test"]
    raw = [prepared.corpus.episodes[i].values for i in prepared.parts["test"]]
    net = card.build_net(state)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x), torch.from_numpy(lengths)), 1).numpy()
    torch_probs = Recognizer.from_checkpoint(result.best_checkpoint).probabilities(raw)
    onnx_probs = Recognizer.from_onnx(export_onnx(net, card, tmp_path / "m.onnx")).probabilities(raw)
    np.testing.assert_allclose(torch_probs, expected, atol=1e-6)
    np.testing.assert_allclose(onnx_probs, expected, atol=1e-5)
    assert result.metrics["test/acc"] == pytest.approx(
        float((expected.argmax(1) == y).mean())
    )  # test never augmented


def test_the_few_shot_grid_is_logged_per_method_shot_and_draw(robust_run):
    cfg, result, _ = robust_run
    run = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    logged = run.data.metrics
    for key in (
        "fewshot/none/k0/acc",
        "val/fewshot/prototype/k2/draw0/acc",  # every method on validation...
        "val/fewshot/prototype/k2/draw1/acc",
        "val/fewshot/renorm.finetune_head/k2/acc",
        "fewshot/chosen/k2/draw0/acc",  # ...and the one chosen there, once on the held-out signer
    ):
        assert 0 <= logged[key] <= 1, key
    choice = run.data.params["fewshot.chosen.k2"]
    on_val = {  # highest accuracy, a tie going to the lower loss
        m: (logged[f"val/fewshot/{name}/k2/acc"], -logged[f"val/fewshot/{name}/k2/loss"])
        for m, name in (("prototype", "prototype"), ("renorm+finetune_head", "renorm.finetune_head"))
    }
    assert on_val[choice] == max(on_val.values())
    assert logged["val/fewshot/prototype/k2/loss"] > 0
    assert not any(
        k.startswith(("fewshot/prototype", "fewshot/renorm")) for k in logged
    )  # no method tried on test
    draws = [logged[f"val/fewshot/prototype/k2/draw{d}/acc"] for d in (0, 1)]
    assert logged["val/fewshot/prototype/k2/acc"] == pytest.approx(np.mean(draws))
    assert logged["fewshot/none/k0/acc"] == pytest.approx(result.metrics["test/acc"])  # k = 0: the base model


def test_prototype_calibration_is_the_nearest_class_mean_on_the_embedding(corpus):
    from signglove_exp.training.adapt import embed

    net, card = Recognizer.from_checkpoint(PRETRAINED).net, read_checkpoint(PRETRAINED)[0]
    raw, labels = signer_episodes(corpus, "JY")
    calib, rest = data.draw_shots(labels, 3, seed=0)
    tuned, tuned_card = adapt(net, card, [raw[i] for i in calib], labels[calib], "prototype", {})
    e_calib, e_rest = embed(net, card, [raw[i] for i in calib]), embed(net, card, [raw[i] for i in rest])
    means = torch.stack([e_calib[torch.from_numpy(labels[calib] == c)].mean(0) for c in range(24)])
    nearest = torch.cdist(e_rest, means).argmin(1).numpy()
    predicted = Recognizer.from_torch(tuned, tuned_card).probabilities([raw[i] for i in rest]).argmax(1)
    assert (predicted == nearest).mean() > 0.999
    assert tuned is not net and any(
        not torch.equal(a, b)
        for a, b in zip(net.state_dict().values(), tuned.state_dict().values(), strict=True)
    )
    # the blend adds the prototype's logits to the trained ones, `weight` times
    blended = adapt(net, card, [raw[i] for i in calib], labels[calib], "prototype_blend:weight=0.3", {})[0]
    inputs = data.model_inputs([raw[i] for i in rest], card)
    trained, prototype, both = (batched_logits(m.eval(), *inputs).numpy() for m in (net, tuned, blended))
    np.testing.assert_allclose(both, trained + 0.3 * prototype, rtol=1e-4, atol=1e-3)
    assert evaluate(tuned, tuned_card, [raw[i] for i in rest], labels[rest])["acc"] > 0


def test_adabn_sets_every_batch_norm_to_the_new_signers_statistics_and_refuses_a_network_without(corpus):
    from dataclasses import replace

    gru_card = read_checkpoint(PRETRAINED)[0]
    card = replace(gru_card, model={"name": "ms3d_gru", "n_channels": 8, "n_classes": 24})
    torch.manual_seed(0)
    net = card.build_net()
    raw, labels = signer_episodes(corpus, "JY")
    calib = data.draw_shots(labels, 2, seed=0)[0]
    shots, labels = [raw[i] for i in calib], labels[calib]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    seen = []  # what each batch norm reads, on the new signer's episodes
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for m in norms]
    with torch.no_grad():
        net(*(torch.from_numpy(a) for a in data.model_inputs(shots, card)))
    for h in hooks:
        h.remove()
    tuned, _ = adapt(net, card, shots, labels, "adabn", {})
    tuned_norms = [m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    # the first layer's input is the new signer's alone; later ones follow the re-estimated first
    b, cc, t = seen[0].shape
    per_channel = seen[0].view(b, cc // norms[0].num_features, norms[0].num_features, t).transpose(1, 2)
    per_channel = per_channel.reshape(b, norms[0].num_features, -1)
    expected = per_channel.mean((0, 2))
    torch.testing.assert_close(tuned_norms[0].running_mean, expected, atol=1e-5, rtol=1e-4)
    assert all(not torch.equal(a.running_var, m.running_var) for a, m in zip(tuned_norms, norms, strict=True))
    assert all(m.momentum == 0.1 and not m.training for m in tuned_norms) and net is not tuned
    with pytest.raises(ValueError, match="adabn: gru has no batch norm to re-estimate"):
        adapt(Recognizer.from_checkpoint(PRETRAINED).net, gru_card, shots, labels, "adabn", {})


def test_a_method_step_carries_its_own_settings_and_a_bad_one_is_named(corpus):
    """`finetune_all:epochs=3:lr=0.003:label_smoothing=0.1` trains exactly as those settings given
    for every step would; the settings differ from the defaults, so the weights must differ too."""
    from signglove_exp.training.adapt import check_methods, metric_name

    net, card = Recognizer.from_checkpoint(PRETRAINED).net, read_checkpoint(PRETRAINED)[0]
    raw, labels = signer_episodes(corpus, "JY")
    calib, _ = data.draw_shots(labels, 1, seed=0)
    shots, y = [raw[i] for i in calib], labels[calib]
    defaults = {"epochs": 2, "lr": 1e-4, "label_smoothing": 0.0, "seed": 0}
    own, _ = adapt(net, card, shots, y, "finetune_all:epochs=3:lr=0.003:label_smoothing=0.1", defaults)
    given, _ = adapt(
        net, card, shots, y, "finetune_all", {**defaults, "epochs": 3, "lr": 3e-3, "label_smoothing": 0.1}
    )
    plain, _ = adapt(net, card, shots, y, "finetune_all", defaults)
    for a, b in zip(own.state_dict().values(), given.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, c)
        for a, c in zip(own.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    assert metric_name("renorm+finetune_all:lr=0.003") == "renorm.finetune_all.lr_0.003"
    for bad, said in [
        ("finetune_all:epochs=ten", "'epochs=ten' is not key=value"),
        ("finetune_all:momentum=0.9", "'momentum=0.9' is not key=value"),
        ("finetune_al:lr=0.1", "unknown method finetune_al"),
    ]:
        with pytest.raises(ValueError, match=f"calibration.methods: .*{said}"):
            check_methods(["prototype", bad])


def test_self_training_pseudo_labels_balanced_and_never_reads_the_episodes_it_is_tested_on(
    corpus, monkeypatch
):
    from signglove_exp.training import adapt as adaptation

    p = adaptation.balanced(torch.randn(96, 24) * 4)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(p.sum(0), 96 / 24, atol=1e-3)  # every class an equal share
    net, card = Recognizer.from_checkpoint(PRETRAINED).net, read_checkpoint(PRETRAINED)[0]
    raw, labels = signer_episodes(corpus, "JY")
    raw, labels = raw[::8], labels[::8]
    read = []

    def spy(net, card, episodes, labels, settings):
        read.append({e.tobytes() for e in settings["unlabelled"]})
        return net, card

    monkeypatch.setitem(adaptation.ADAPTATIONS, "spy", spy)
    monkeypatch.setattr(adaptation, "UNLABELLED", {"selftrain", "spy"})
    settings = {"shots": [1], "draws": 1, "seed": 0, "methods": ["spy"]}
    adaptation.few_shot_grid(net, card, raw, labels, settings)
    calib, rest = data.draw_shots(labels, 1, 0)
    assert len(read) == 2 and not read[0] & read[1]  # each half's model read the other half only
    assert read[0] | read[1] == {raw[i].tobytes() for i in rest}  # never a shot
    monkeypatch.setattr(adaptation, "LABEL_FREE", {"spy"})  # k = 0: no shot, halves of every episode
    read.clear()
    grid = adaptation.few_shot_grid(net, card, raw, labels, {**settings, "shots": []})
    assert len(read) == 2 and not read[0] & read[1] and read[0] | read[1] == {e.tobytes() for e in raw}
    assert grid["fewshot/spy/k0/acc"] == pytest.approx(grid["fewshot/none/k0/acc"])  # halves pooled
    settings = {"epochs": 2, "lr": 1e-3, "rounds": 2, "pseudo_batch": 16, "seed": 0}
    shots = [raw[i] for i in calib]
    with pytest.raises(ValueError, match="selftrain: no unlabelled episodes of the person to read"):
        adapt(net, card, shots, labels[calib], "selftrain", settings)
    pool = [raw[i] for i in rest]
    tuned = adapt(net, card, shots, labels[calib], "selftrain", {**settings, "unlabelled": pool})[0]
    other = adapt(net, card, shots, labels[calib], "selftrain", {**settings, "unlabelled": pool[::2]})[0]
    blind = adapt(net, card, [], labels[:0], "selftrain", {**settings, "unlabelled": pool})[0]  # no shot
    for a, b in ((tuned, other), (blind, net)):  # the pool, not the shots alone, decides the weights
        pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        assert any(not torch.equal(x, y) for x, y in pairs)


def test_calibrate_turns_the_pretrained_model_into_a_logged_personal_model(
    corpus, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "my-recordings"
    for e in [e for e in corpus.episodes if e.signer == "JY" and e.reason is None][::6]:
        (folder / e.jamo / e.session).mkdir(parents=True, exist_ok=True)
        shutil.copy(episodes_root() / e.path, folder / e.jamo / e.session / Path(e.path).name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    out = calibrate.main([str(PRETRAINED), "--data", str(folder), "--shots", "2", "--tracking-uri", uri])
    client = MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.data.tags["signglove.kind"] == "calibration" and run.data.params["method"] == DEFAULT_METHOD
    assert out["test/acc"] == run.data.metrics["test/acc"]
    rec = Recognizer.load(out["run_id"], uri)
    assert rec.card.lineage["source"] == str(PRETRAINED) and rec.card.lineage["shots"] == 2
    assert "source_lineage" in rec.card.lineage and rec.card.lineage["method"] == DEFAULT_METHOD
    with open(
        client.download_artifacts(out["run_id"], "calibration_manifest.csv", str(tmp_path)), encoding="utf-8"
    ) as f:
        rows = list(csv.DictReader(f))
    calibration = [r for r in rows if r["role"] == "calibration"]
    assert len(calibration) == 48 and {r["jamo"] for r in calibration} == set(rec.classes)
    tested = [folder / r["path"] for r in rows if r["role"] == "test"]
    predictions = rec.predict_files(tested)
    truth = [p.parent.parent.name for p in tested]
    assert np.mean([p.jamo == t for p, t in zip(predictions, truth, strict=True)]) == pytest.approx(
        out["test/acc"]
    )
    served = Recognizer.load(f"runs:/{out['run_id']}/model", uri)  # the pyfunc model carries it too
    assert served.card.lineage == rec.card.lineage
    base = read_checkpoint(PRETRAINED)[0]
    assert rec.card.scaler != base.scaler  # renorm: the new signer's statistics travel in the card
    onnx = Recognizer.from_onnx(export_onnx(rec.net, rec.card, tmp_path / "personal.onnx"))
    episodes = [rec.read(f) for f in tested[:40]]
    np.testing.assert_allclose(onnx.probabilities(episodes), rec.probabilities(episodes), atol=1e-5)
    with pytest.raises(ValueError, match="--method: unknown method nearest"):
        calibrate.main([str(PRETRAINED), "--data", str(folder), "--method", "renorm+nearest"])
    capsys.readouterr()
    every = calibrate.main(
        [str(PRETRAINED), "--data", str(folder), "--shots", "500", "--method", "prototype"]
        + ["--tracking-uri", uri]
    )
    held = min(truth.count(j) + 2 for j in set(truth))  # the fewest episodes of a class in the folder
    lineage = Recognizer.load(every["run_id"], uri).card.lineage
    assert lineage["shots"] == held and lineage["shots_asked"] == 500  # what was used, not what was asked
    assert f"{held} per class; 500 asked, the data holds fewer" in capsys.readouterr().out
    with pytest.raises(
        ValueError, match="--method selftrain reads unlabelled episodes .* holds only the shots"
    ):
        calibrate.main([str(PRETRAINED), "--data", str(folder), "--shots", "500", "--method", "selftrain"])
    method = "renorm+finetune_all:epochs=2+selftrain:rounds=1:epochs=2"
    own = calibrate.main(
        [str(PRETRAINED), "--data", str(folder), "--shots", "2", "--method", method, "--tracking-uri", uri]
    )
    with open(client.download_artifacts(own["run_id"], "calibration_manifest.csv", str(tmp_path / "s"))) as f:
        roles = [r["role"] for r in csv.DictReader(f)]
    assert roles.count("calibration") == 48 and abs(roles.count("unlabelled") - roles.count("test")) <= 1
    assert "read without their labels (selftrain)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--shots 0 uses no labels; --method prototype needs shots"):
        calibrate.main([str(PRETRAINED), "--data", str(folder), "--shots", "0", "--method", "prototype"])
    blind = calibrate.main(
        [str(PRETRAINED), "--data", str(folder), "--shots", "0", "--method", "selftrain:rounds=1:epochs=2"]
        + ["--tracking-uri", uri]
    )
    manifest = client.download_artifacts(blind["run_id"], "calibration_manifest.csv", str(tmp_path / "0"))
    with open(manifest, encoding="utf-8") as f:
        roles = [r["role"] for r in csv.DictReader(f)]
    assert "calibration" not in roles and abs(roles.count("unlabelled") - roles.count("test")) <= 1
    assert f"no labels; selftrain:rounds=1:epochs=2 read {roles.count('unlabelled')} episodes" in (
        capsys.readouterr().out
    )


def test_a_per_signer_model_reads_a_person_only_with_that_persons_statistics(tmp_path, cache_dir, capsys):
    """`data=signer_robust` scales each signer by its own recordings. `evaluate` on the held-out
    signer's folder reproduces the run's test/acc (its statistics, from that folder, labels unused);
    `recognize` refuses the base model (it used to scale with the training signers' statistics, a
    silently wrong jamo) and takes the personal model `calibrate --shots 0` makes, agreeing with
    `evaluate` episode for episode."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(
        f"data.root={episodes_root()}",
        f"data.cache_dir={cache_dir}",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"tracking.uri={uri}",
        "tracking.log_model=false",
        "data=signer_robust",
        "split=by_signer",
        "split.test_signer=JY",
        "trainer=debug",
    )
    result = train(cfg)
    jy = episodes_root() / "unified_JY"
    out = evaluate_command.main(
        [result.run_id, "--data", str(jy), "--tracking-uri", uri, "--out", str(tmp_path / "ev")]
    )
    assert out["eval/acc"] == pytest.approx(result.metrics["test/acc"], abs=1e-6)  # logged as float32
    assert (
        "Scaled with unlabelled statistics of the evaluated recording (per signer: JY)"
        in capsys.readouterr().out
    )
    (evaluation,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("signglove").experiment_id],
        "tags.`signglove.kind` = 'evaluation'",
    )
    assert evaluation.data.tags["signglove.statistics"] == "unlabelled statistics of the evaluated recording"

    files = sorted(jy.rglob("episode_*.csv"))[::50]
    needs = (
        r"this model normalises per signer .* signglove_exp.calibrate MODEL --data YOUR_RECORDINGS --shots 0"
    )
    with pytest.raises(ValueError, match=needs):
        recognize.main([result.run_id, *map(str, files), "--tracking-uri", uri])
    served = GlovePyfunc()
    served.load_context(SimpleNamespace(artifacts={"checkpoint": result.best_checkpoint}))
    with pytest.raises(MlflowException, match="this served model: " + needs):  # HTTP 400 when served
        served.predict(
            None,
            pd.DataFrame(data.read_episode(files[0], cfg.data.channels, 1)[0], columns=cfg.data.channels),
        )
    personal = calibrate.main([result.run_id, "--data", str(jy), "--shots", "0", "--tracking-uri", uri])
    assert personal["test/acc"] == pytest.approx(out["eval/acc"], abs=1e-9)  # the same statistics, all of JY
    rec = Recognizer.load(personal["run_id"], uri)
    assert rec.card.lineage["shots"] == 0 and rec.card.preprocess["scaler_of"] == "signer"
    with open(tmp_path / "ev" / "predictions.csv", encoding="utf-8") as f:
        evaluated = {row["path"]: row["predicted"] for row in csv.DictReader(f)}
    for path, prediction in zip(files, rec.predict_files(files), strict=True):
        assert prediction.jamo == evaluated[path.relative_to(jy).as_posix()], path


def test_calibrating_on_some_classes_is_refused_not_a_model_that_reads_the_others_wrong(corpus, tmp_path):
    """Three jamo of 24 used to give a personal model that read the signer's other 21 at 0.12 (40% of
    all its answers one of the three) while its summary showed 1.000 -> 0.908 on those three."""
    folder = tmp_path / "three"
    for e in [e for e in corpus.episodes if e.signer == "JY" and e.jamo in "ㄱㄴㄷ" and e.reason is None][
        ::9
    ]:
        (folder / e.jamo / e.session).mkdir(parents=True, exist_ok=True)
        shutil.copy(episodes_root() / e.path, folder / e.jamo / e.session / Path(e.path).name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refused = r"--data .*three: no episode of 21 of the model's 24 classes \(ㄹ ㅁ .*\); calibrating on some"
    with pytest.raises(ValueError, match=refused):
        calibrate.main([str(PRETRAINED), "--data", str(folder), "--shots", "2", "--tracking-uri", uri])
    assert not (tmp_path / "mlflow.db").exists()  # no personal model was logged


def test_the_calibration_sweep_reports_learning_curves_to_its_parent(tmp_path, cache_dir):
    client, runs, _ = run_sweep(
        tmp_path,
        cache_dir,
        "sweep=calibration",
        "model=gru",
        "split.test_signer=JY",
        "trainer.max_epochs=1",
        "calibration.shots=[1,2]",
        "calibration.draws=2",
        'calibration.methods=[prototype,"selftrain:rounds=1:epochs=2"]',
        "tracking.log_model=false",
    )
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = [r for r in runs if r is not parent]
    at_zero, logged = child.data.params["fewshot.chosen.k0"], child.data.metrics
    on_val = {  # k = 0: as trained, or selftrain's labels of its own; validation chooses
        m: (logged[f"val/fewshot/{m}/k0/acc"], -logged[f"val/fewshot/{m}/k0/loss"])
        for m in ("none", "selftrain.rounds_1.epochs_2")
    }
    assert metric_name(at_zero) == max(on_val, key=on_val.get)
    if at_zero == "none":
        assert logged["fewshot/chosen/k0/acc"] == logged["fewshot/none/k0/acc"]
    assert "fewshot/selftrain.rounds_1.epochs_2/k0/acc" not in child.data.metrics  # measured once: chosen
    report = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path)))
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "## Few-shot calibration on the held-out signer" in text
    assert "| gru | chosen |" in text and (report / "calibration_curves.png").stat().st_size > 10_000
    assert (
        "`chosen`: for each k, the method best on the validation part" in text
        and f"k=0: {at_zero} (gru, JY)" in text
    )
