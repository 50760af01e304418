"""Nothing lost, nothing silently wrong: bad data, bad settings, bad files, racing processes and a
tracking server that goes away (real files, real stores, a real `mlflow server` on 127.0.0.1)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from signglove_exp import BUNDLED_DIR, data, evaluate, upload
from signglove_exp.card import read_card
from signglove_exp.metrics import classification_metrics
from signglove_exp.tracking import records
from signglove_exp.training.train import train
from tests.conftest import (
    cli_command,
    cli_env,
    compose_config,
    episodes_root,
    free_port,
    run_cli,
    run_module,
    start_server,
    stop_server,
    store_overrides,
)

REFERENCE = BUNDLED_DIR / "pretrained" / "gru-reference.ckpt"
BUNDLED = episodes_root()
QUICK = ["trainer=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "tracking.log_model=false"]


def copy_episodes(dest: Path, jamo: list[str], per_class: int = 4, signer: str = "unified_HB") -> list[Path]:
    copied = []
    for j in jamo:
        for f in sorted((BUNDLED / signer).rglob(f"{j}/*/episode_*.csv"))[:per_class]:
            target = dest / signer / j / f.parent.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copy(f, target)))
    return copied


# 1. A mistyped data.root


def test_a_mistyped_data_root_is_an_error_and_nothing_is_unpacked_there(tmp_path, cache_dir):
    typo = tmp_path / "signglov"
    store = store_overrides(tmp_path, cache_dir, new_store=True)
    proc = run_cli(*store, f"data.root={typo}", *QUICK, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"Error: data.root {typo} does not exist"
    assert not typo.exists() and not (tmp_path / "mlflow.db").exists()  # no run was opened


# 2. Macro scores over the classes present


def test_macro_scores_average_over_the_classes_present_only():
    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2])
    assert classification_metrics(y_true, y_pred)["f1_macro"] == 1.0  # not 3/24
    y_pred = np.array([0, 1, 1, 1, 2, 5])  # a class predicted that the truth lacks
    m = classification_metrics(y_true, y_pred)
    assert m["recall_macro"] == pytest.approx(m["balanced_acc"])


def test_the_metrics_are_scikit_learns_scorers_with_the_classes_present():
    from sklearn import metrics as sk

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = rng.integers(1, 60), rng.integers(2, 8)
        y_true = rng.integers(0, k, n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, k + 2, n))  # some absent classes
        macro = {"average": "macro", "labels": np.unique(y_true).tolist(), "zero_division": 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = {
                "acc": sk.accuracy_score(y_true, y_pred),
                "balanced_acc": sk.balanced_accuracy_score(y_true, y_pred),
                "f1_macro": sk.f1_score(y_true, y_pred, **macro),
                "precision_macro": sk.precision_score(y_true, y_pred, **macro),
                "recall_macro": sk.recall_score(y_true, y_pred, **macro),
            }
        assert classification_metrics(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_evaluating_on_a_folder_with_three_jamo_says_which_classes_are_missing(tmp_path, capsys):
    copy_episodes(tmp_path / "three", ["ㄱ", "ㄴ", "ㄷ"], per_class=5, signer="unified_JY")
    metrics = evaluate.main(
        [
            str(REFERENCE),
            "--data",
            str(tmp_path / "three"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
        ]
    )
    out = capsys.readouterr().out
    assert "21 of the model's 24 classes have no episode here (ㄹ ㅁ" in out and "over the 3 present" in out
    assert metrics["eval/recall_macro"] == pytest.approx(metrics["eval/balanced_acc"])
    assert metrics["eval/f1_macro"] >= metrics["eval/acc"] - 0.35  # not divided by 24


# 3. Parallel runs on a new SQLite store, each in a run folder of its own


def test_runs_started_together_on_a_new_sqlite_store_all_land_in_folders_of_their_own(
    tmp_path, cache_dir, spawn
):
    """Started in the same second with the default run folder (its name holds the second): each
    run still gets its own folder, record and config."""
    store = store_overrides(tmp_path, cache_dir, new_store=True)
    procs = [
        spawn(
            cli_command(*store, *QUICK, f"seed={seed}"),
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-1500:] for e in errors)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    folders = {Path(r.data.tags["signglove.run_dir"]): r for r in runs}
    assert len(folders) == 2
    for folder, run in folders.items():
        assert json.loads((folder / "run.json").read_text(encoding="utf-8"))["run_id"] == run.info.run_id
        saved = (folder / "config.yaml").read_text(encoding="utf-8")
        assert f"\nseed: {run.data.params['seed']}\n" in saved


def test_a_run_folder_in_use_is_refused_not_shared(make_cfg, tmp_path):
    """A second run (or a second resume= of the same run) given a folder whose run is still going."""
    cfg = make_cfg(*QUICK)
    in_use = pytest.raises(ValueError, match=r"run is in use by a run that is still running")
    with records.claimed(tmp_path / "run"), in_use:  # the first run, still training
        train(cfg)
    assert not (tmp_path / "run" / "run.json").exists()  # nothing of the second was written


# 4. A tracking server that goes away


def test_training_outlives_its_tracking_server_and_uploads_when_it_is_back(tmp_path, cache_dir, spawn, capfd):
    """The server is a real process, stopped while training (here, in a thread) runs against it."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(spawn, tmp_path, port)
    folder = tmp_path / "run"
    cfg = compose_config(
        f"paths.outputs={tmp_path / 'outputs'}",
        f"data.cache_dir={cache_dir}",
        f"data.root={episodes_root()}",
        f"tracking.uri={uri}",
        "trainer=debug",
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=1.0",
        "tracking.http_retries=1",
        "threads=1",
        f"paths.output_dir={folder}",
    )
    outcome = {}
    training = threading.Thread(target=lambda: outcome.update(result=train(cfg)))
    try:
        training.start()
        while not (folder / "checkpoints" / "last.ckpt").is_file():
            assert training.is_alive(), "training ended before its first checkpoint"
            time.sleep(0.05)
    finally:
        stop_server(server)  # the server goes away during training
    started = time.time()
    training.join(timeout=600)
    out, err = capfd.readouterr()
    assert "result" in outcome, err[-3000:]
    assert time.time() - started < 120  # bounded retries, not minutes of stalling
    assert err.count("stopped answering") == 1 and "Traceback" not in err
    assert f"python -m signglove_exp.upload {folder}" in err and "Not yet in MLflow" in out
    assert (
        len([line for line in (folder / "metrics.jsonl").read_text().splitlines() if '"val/loss"' in line])
        == 5
    )

    server = start_server(spawn, tmp_path, port)
    try:
        assert upload.main([str(folder)]) == "FINISHED"
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == sorted(
            {m.step for m in client.get_metric_history(run.info.run_id, "val/loss")}
        )
        assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 5
        assert "test/acc" in run.data.metrics
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "scaler.json", "confusion_matrix.png", "checkpoints"} <= files
        (ckpt,) = client.list_artifacts(run.info.run_id, "checkpoints")
        local = client.download_artifacts(run.info.run_id, ckpt.path, str(tmp_path / "back"))
        assert read_card(local).name == "gru"
    finally:
        stop_server(server)


# 6. Data that leaks or skews


def test_byte_identical_copies_stay_in_one_part_and_are_reported(tmp_path, cache_dir):
    root = tmp_path / "copies"
    originals = copy_episodes(root, ["ㄱ", "ㄴ", "ㄷ"], per_class=10)
    for f in originals:
        twin = f.with_name(f.stem + "_copy.csv")
        shutil.copy(f, twin)
    cfg = compose_config(f"data.root={root}", "data.cache_dir=null", "data.classes=['ㄱ','ㄴ','ㄷ']")
    prepared = data.prepare(cfg.data, cfg.split)
    eps = prepared.corpus.episodes
    part_of = {eps[i].path: p for p, idx in prepared.parts.items() for i in idx}
    assert len(prepared.duplicates) == len(originals)
    for copy, original in prepared.duplicates.items():
        assert part_of[eps[copy].path] == part_of[eps[original].path]
    files = data.write_reports(prepared, tmp_path / "out")
    listed = (tmp_path / "out" / "duplicates.tsv").read_text(encoding="utf-8").splitlines()
    assert len(listed) == 1 + len(originals) and tmp_path / "out" / "duplicates.tsv" in files


def test_the_scaler_sees_what_the_model_reads():
    short, long = np.zeros((80, 1)), np.full((10_000, 1), 100.0)
    scaler = data.fit_scaler([short, long], ["flex1"], seq_len=87)
    assert scaler["n_samples_seen"] == 80 + 87 and scaler["mean"][0] == pytest.approx(100 * 87 / 167)


def test_linked_folders_fifos_dangling_links_bom_and_doubled_columns(tmp_path):
    root = tmp_path / "root"
    good = copy_episodes(root / "store", ["ㄱ"], per_class=3)
    (root / "unified_HB").mkdir(parents=True)
    (root / "unified_HB" / "ㄱ").symlink_to(good[0].parents[1], target_is_directory=True)  # a linked class
    session = root / "unified_HB" / "ㄴ" / "1"
    session.mkdir(parents=True)
    os.mkfifo(session / "episode_fifo.csv")
    (session / "episode_dangling.csv").symlink_to(root / "gone.csv")
    (session / "loop").symlink_to(session, target_is_directory=True)
    (session / "machine").symlink_to("/", target_is_directory=True)  # never walked: not in data.root
    elsewhere = copy_episodes(tmp_path / "elsewhere", ["ㄴ"], per_class=1)[0]
    (session / "episode_elsewhere.csv").symlink_to(elsewhere)
    text = good[0].read_text(encoding="utf-8")
    (session / "episode_bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    header, rest = text.split("\n", 1)
    (session / "episode_twice.csv").write_text(
        header.replace("flex3", "flex1") + "\n" + rest, encoding="utf-8"
    )
    started = time.time()
    corpus = data.load_corpus(root, ["ㄱ", "ㄴ"], ["flex1", "flex2", "pitch"], 10, "unified_")
    assert time.time() - started < 30  # the FIFO was never opened
    usable = {Path(e.path).name for e in corpus.episodes if e.reason is None}
    assert usable == {g.name for g in good} | {"episode_bom.csv"}
    reasons = {Path(p).name: r for p, r in corpus.rejected}
    assert reasons["episode_fifo.csv"].startswith("not a regular file")
    assert reasons["episode_dangling.csv"].startswith("not a regular file")
    assert reasons["episode_twice.csv"] == "column(s) flex1 appear more than once in the header"
    assert reasons["loop"].startswith("a link to a folder already read")
    assert reasons["machine"] == "a link out of data.root: not followed"
    assert reasons["episode_elsewhere.csv"] == "a link out of data.root: not read"


# 7. Clear errors


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.seq_len=0", "data.seq_len=0: must be a whole number >= 1"),
        ("data.seq_len=8.5", "data.seq_len=8.5: must be a whole number >= 1"),
        ("data.batch_size=0", "data.batch_size=0: must be a whole number >= 1"),
        ("data.channels=[]", "data.channels is empty: name at least one"),
        ("data.channels=[flex1,bend9]", "(2884 file(s): missing column(s) bend9)"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(override, message, cache_dir):
    cfg = compose_config(override, f"data.cache_dir={cache_dir}")
    with pytest.raises(ValueError) as error:
        data.prepare(cfg.data, cfg.split)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_class_too_small_to_split_is_named_by_its_jamo(tmp_path):
    root = tmp_path / "few"
    copy_episodes(root, ["ㄱ", "ㄴ"], per_class=10)
    copy_episodes(root, ["ㅎ"], per_class=1)
    cfg = compose_config(f"data.root={root}", "data.cache_dir=null", "data.classes=['ㄱ','ㄴ','ㅎ']")
    with pytest.raises(ValueError, match=r"too few episodes to stratify for class\(es\) ㅎ \(1 episodes\)"):
        data.prepare(cfg.data, cfg.split)


def test_classes_without_episodes_stop_the_run_unless_allowed(tmp_path):
    root = tmp_path / "two"
    copy_episodes(root, ["ㄱ", "ㄴ"], per_class=10)
    classes = "data.classes=['ㄱ','ㄴ','ㅎ']"
    cfg = compose_config(f"data.root={root}", "data.cache_dir=null", classes)
    with pytest.raises(ValueError, match=r"data.classes ㅎ have no usable episode under data.root .*two"):
        data.prepare(cfg.data, cfg.split)
    cfg = compose_config(
        f"data.root={root}", "data.cache_dir=null", classes, "data.allow_missing_classes=true"
    )
    assert len(data.prepare(cfg.data, cfg.split).corpus.classes) == 3


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_damaged_checkpoint_is_a_clear_error_that_never_advises_unsafe_loading(tmp_path, damage):
    bad = tmp_path / "model.ckpt"
    raw = REFERENCE.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3] if damage == "truncated" else os.urandom(4096))
    with pytest.raises(ValueError) as error:
        read_card(bad)
    assert str(error.value).startswith(f"{bad}: not a readable checkpoint")
    assert "weights_only" not in str(error.value)
    proc = run_module("signglove_exp.describe", str(bad), cwd=tmp_path)
    assert proc.returncode != 0 and "weights_only=False" not in proc.stderr
    assert torch.load(REFERENCE, weights_only=True)  # the real one is fine


def test_a_kill_while_a_checkpoint_is_written_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    """$TMPDIR on another filesystem (a tmpfs) made Lightning's move a copy onto last.ckpt: a kill
    during it left a truncated file. A process saving a 64 MB checkpoint again and again, as training
    does each epoch, is killed the moment last.ckpt is seen changing: what is there must load."""
    from signglove_exp.training.checkpoint_io import AtomicCheckpointIO

    monkeypatch.setattr(tempfile, "tempdir", "/dev/shm" if Path("/dev/shm").is_dir() else str(tmp_path))
    last, weights = tmp_path / "checkpoints" / "last.ckpt", torch.arange(16_000_000, dtype=torch.float32)
    AtomicCheckpointIO().save_checkpoint({"epoch": 0, "w": weights}, last)
    whole = last.stat()
    pid = os.fork()
    if pid == 0:  # the training process, saving until it is killed
        for epoch in range(1, 10_000):
            AtomicCheckpointIO().save_checkpoint({"epoch": epoch, "w": weights}, last)
        os._exit(1)
    try:
        deadline = time.time() + 60
        while (now := last.stat()).st_mtime_ns == whole.st_mtime_ns and now.st_ino == whole.st_ino:
            assert time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    saved = torch.load(last, weights_only=True)  # whole: the first or a later one, never a part
    assert torch.equal(saved["w"], weights)
    assert [p.name for p in last.parent.iterdir() if p != last] in ([], [f".last.ckpt.{pid}.partial"])


def test_a_file_size_limit_during_a_run_is_one_line_naming_the_file(tmp_path, cache_dir):
    """`ulimit -f` (or a full disk) hit by a checkpoint write: it was a 40-line traceback naming no file."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, limit[1]))  # a GRU of 512 units checkpoints ~10 MB
    try:
        run = f"hydra.run.dir={tmp_path / 'run'}"
        proc = run_cli(
            *store_overrides(tmp_path, cache_dir), *QUICK, "model.hidden=512", run, cwd=tmp_path, check=False
        )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        f"Error: [Errno {errno.EFBIG}] File too large: '{tmp_path / 'run' / 'checkpoints'}"
    ), line
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (failed,) = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    assert failed.info.status == "FAILED"


def test_a_checkpoint_cannot_copy_the_environment_into_a_run(make_cfg, tmp_path, monkeypatch):
    """A model card whose value is `${oc.env:...}` would be resolved by OmegaConf into params,
    config.yaml and the new card: refused, and the secret is nowhere."""
    monkeypatch.setenv("SIGNGLOVE_TEST_SECRET", "hunter2")
    ckpt = torch.load(REFERENCE, map_location="cpu", weights_only=True)
    ckpt["signglove"]["padding"]["value"] = "${oc.env:SIGNGLOVE_TEST_SECRET}"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    with pytest.raises(ValueError, match=r"padding.value holds an interpolation .* refused"):
        train(make_cfg(*QUICK, f"init_from={crafted}"))
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".db")]
    assert not any(b"hunter2" in p.read_bytes() for p in written)


def test_a_run_from_a_model_uri_lands_in_the_store_the_environment_names(cli_run, tmp_path, cache_dir):
    """MLFLOW_TRACKING_URI names the store: the source model is read from it, and the new run goes to
    it (MLflow's own temporary URI switch used to delete the variable, and the run went to
    ./outputs/mlflow.db)."""
    _, source, tmp, _ = cli_run
    store = tmp_path / "team.db"
    shutil.copyfile(tmp / "mlflow.db", store)  # the shared run's store, as a team's store
    settings = [o for o in store_overrides(tmp_path, cache_dir) if not o.startswith("tracking.uri=")]
    run_cli(
        *settings,
        *QUICK,
        f"init_from=runs:/{source.info.run_id}/model",
        "finetune.train=head",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
    )
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    (tuned,) = [r for r in runs if r.data.tags.get("signglove.run_dir", "").startswith(str(tmp_path))]
    assert tuned.data.tags["signglove.source_run"] == source.info.run_id
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
