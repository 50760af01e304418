"""The fast paths compute the same model: grid convolutions against upstream's Conv3d on real
episodes, the folded inference form, recurrences stopped at the last read step, the thread policy,
the benchmarks' baselines, and int8 convolutions that keep upstream's accuracy."""

import os

import pytest
import torch

from signglove_exp import BUNDLED_DIR, data
from signglove_exp.bench import CHECKPOINTS
from signglove_exp.bench import main as bench
from signglove_exp.bench_train import main as bench_train
from signglove_exp.benchmarks.upstream_recipe import run as upstream_run
from signglove_exp.benchmarks.upstream_recipe import upstream_net
from signglove_exp.card import CARD_KEY
from signglove_exp.describe import describe
from signglove_exp.export import main as export
from signglove_exp.models import build_model, fold
from signglove_exp.training.train import cpu_threads
from signglove_exp.upstream.convert import import_checkpoint
from signglove_exp.upstream.scaler import read_scaler_pickle
from tests.conftest import compose_config, episodes_root

MS3D = ("ms3d_gru", "ms3d_stacked_gru")


@pytest.fixture(scope="module")
def val_arrays(cache_dir):
    cfg = compose_config(f"data.cache_dir={cache_dir}")
    x, lengths, y = data.prepare(cfg.data, cfg.split).arrays["val"]
    return torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(y)


def pair(name: str, dtype=torch.float32, **hparams):
    """This project's network and upstream's Conv3d network, with the same weights."""
    torch.manual_seed(0)
    ours = build_model(name, **hparams).to(dtype)
    reference = upstream_net(name, readout="last_real", **hparams).to(dtype)
    reference.load_state_dict(ours.state_dict())  # same keys, same shapes: upstream's checkpoints load
    return ours, reference


def train_briefly(net, x, lengths, y, steps=3):
    """A few real optimiser steps, so batch-norm statistics and weights are no longer at their init."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for i in range(steps):
        batch = slice(64 * i, 64 * (i + 1))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[batch], lengths[batch]), y[batch]).backward()
        optimizer.step()


@pytest.mark.parametrize("name", MS3D)
def test_grid_convolutions_are_upstreams_conv3d_on_real_episodes(name, val_arrays):
    x, lengths, y = val_arrays
    ours, reference = pair(name, dropout=0.0)
    train_briefly(ours, x, lengths, y)
    reference.load_state_dict(ours.state_dict())

    ours.eval(), reference.eval()
    with torch.no_grad():
        a, b = ours(x, lengths), reference(x, lengths)
    assert (a - b).abs().max() <= 1e-5
    assert torch.equal(a.argmax(1), b.argmax(1))  # the same jamo for all 577 validation episodes

    ours.train(), reference.train()  # batch statistics, as in training
    grads = []
    for net in (ours, reference):
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:128], lengths[:128]), y[:128]).backward()
        grads.append([p.grad for p in net.parameters()])
    flat = [torch.cat([g.flatten() for g in gs]) for gs in grads]
    assert (flat[0] - flat[1]).norm() <= 1e-4 * flat[1].norm()
    scale = flat[1].abs().max()
    for (key, _), g, ref in zip(ours.named_parameters(), *grads, strict=True):
        assert (g - ref).abs().max() <= 1e-4 * scale, key


@pytest.mark.parametrize("name", MS3D)
def test_grid_convolutions_and_max_first_batch_norm_train_exactly_in_double_precision(name):
    ours, reference = pair(name, torch.float64, dropout=0.0)
    ours.cnn_post[0].weight.data.normal_()  # negative scales: the max over cells becomes a min
    assert (ours.cnn_post[0].weight < 0).any()
    reference.load_state_dict(ours.state_dict())
    for _ in range(2):  # training mode: batch statistics, running statistics updated
        x, lengths = torch.randn(16, 87, 8, dtype=torch.float64), torch.randint(1, 88, (16,))
        a, b = ours(x, lengths), reference(x, lengths)
        assert (a - b).abs().max() < 1e-12
        ga = torch.autograd.grad(a.square().sum(), list(ours.parameters()))
        gb = torch.autograd.grad(b.square().sum(), list(reference.parameters()))
        assert max(float((p - q).abs().max()) for p, q in zip(ga, gb, strict=True)) < 1e-10
    for key, value in reference.state_dict().items():
        assert (ours.state_dict()[key] - value).abs().max() < 1e-12, key


@pytest.mark.parametrize("grid", [None, (3, 3)])
@pytest.mark.parametrize("name", MS3D)
def test_the_folded_inference_form_is_exact_in_double_precision(name, grid):
    torch.manual_seed(0)
    net = build_model(name, grid=grid).double()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        bn.weight.data.normal_()  # negative scales too: the max over cells must take the other side
        bn.bias.data.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    assert any((m.weight < 0).any() for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    net.eval()
    x, lengths = torch.randn(16, 87, 8, dtype=torch.float64), torch.randint(1, 88, (16,))
    folded = fold(net)
    with torch.no_grad():
        assert (folded(x, lengths) - net(x, lengths)).abs().max() < 1e-12
    n_ops = sum(1 for m in folded.folded.modules() if not list(m.children()))
    assert n_ops < sum(1 for m in (*net.cnn_post, *net.tower1) if not list(m.children())) * net.n_towers


def test_int8_convolutions_keep_upstreams_accuracy(tmp_path):
    table = bench(["--models", "ms3d_gru", "--repeats", "4"])
    rows = {
        r.split(" | ")[1]: float(r.split(" | ")[2]) for r in table.splitlines() if r.startswith("| ms3d_gru")
    }
    assert set(rows) == {"PyTorch eager", "ONNX Runtime", "ONNX Runtime int8"}
    assert rows["PyTorch eager"] == rows["ONNX Runtime"] == 0.9913  # upstream's claim, folded or not
    assert rows["ONNX Runtime int8"] >= 0.985

    cfg = compose_config()  # the same through the commands, from a checkpoint with a card
    scaler = read_scaler_pickle(BUNDLED_DIR / "legacy" / "scaler.pkl", list(cfg.data.channels))
    net, card = import_checkpoint(BUNDLED_DIR / "legacy" / CHECKPOINTS["ms3d_gru"], scaler, cfg)
    torch.save({"state_dict": net.state_dict(), CARD_KEY: card.to_dict()}, tmp_path / "m.ckpt")
    path = export(["--int8", "32", str(tmp_path / "m.ckpt")])
    assert describe(path)["source"] == "ONNX model, int8 convolutions, calibrated on 32 episodes"
    assert describe(export([str(tmp_path / "m.ckpt")]))["source"] == "ONNX model, float32"


@pytest.mark.parametrize("name", ["gru", "stacked_gru", *MS3D])
def test_recurrence_stops_at_the_last_read_step_and_reads_the_same(name, val_arrays):
    x, lengths, _ = val_arrays
    net = build_model(name).eval()
    short = torch.nonzero(lengths <= 80).flatten()[:32]  # real episodes have at most 80 rows
    assert len(short) == 32
    steps = []
    first_gru = next(m for m in net.modules() if isinstance(m, torch.nn.GRU))
    first_gru.register_forward_hook(lambda m, i, o: steps.append(i[0].shape[1]))
    with torch.no_grad():
        alone = net(x[short], lengths[short])
        beside_a_full_episode = net(
            torch.cat([x[short], x[:1] * 0]), torch.cat([lengths[short], torch.tensor([87])])
        )
    full = {"gru": 87, "stacked_gru": 87, "ms3d_gru": 43, "ms3d_stacked_gru": 87}[name]
    assert steps[0] < full and steps[1] == full
    assert (alone - beside_a_full_episode[:32]).abs().max() <= 1e-5


def test_upstream_readout_runs_every_step():
    net = build_model("gru", readout="upstream").eval()
    steps = []
    net.RNN.register_forward_hook(lambda m, i, o: steps.append(i[0].shape[1]))
    net(torch.zeros(2, 87, 8), torch.tensor([10, 20]))
    assert steps == [87]


def test_threads_auto_gives_recurrent_models_one_and_convolutions_the_cores(tmp_path):
    cfg = compose_config(f"paths.output_dir={tmp_path}")
    assert cpu_threads(cfg, build_model("gru")) == 1
    assert cpu_threads(cfg, build_model("ms3d_gru")) == len(os.sched_getaffinity(0))
    cfg.threads = 3
    assert cpu_threads(cfg, build_model("gru")) == 3
    cfg.threads = 0
    with pytest.raises(ValueError, match="threads=0"):
        cpu_threads(cfg, build_model("gru"))


def test_upstream_recipe_trains_and_tests_on_the_same_arrays(cache_dir, tmp_path):
    timer = tmp_path / "timer.json"
    metrics = upstream_run(
        "gru", 2, str(timer), [f"data.root={episodes_root()}", f"data.cache_dir={cache_dir}"]
    )
    assert set(metrics) == {"test/loss", "test/acc"}
    assert 0.04 < metrics["test/acc"] <= 1  # two epochs: above chance (1/24), not necessarily good
    assert timer.read_text().count("epoch_end") == 2


@pytest.mark.slow
def test_training_benchmark_prints_both_sides():
    table = bench_train(["--models", "gru", "--epochs", "2", "--repeats", "1"])
    assert "| gru | upstream recipe |" in table and "| gru | signglove-exp |" in table
    assert "warm: from the cache" in table
