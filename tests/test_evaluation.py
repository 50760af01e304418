"""Split protocols, manifests, comparison reports and evaluation runs, on the real episodes."""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from signglove_exp import data, evaluate, report
from signglove_exp.metrics import summarise
from signglove_exp.reporting import compare
from signglove_exp.tracking import queries as tracking_queries
from signglove_exp.training.train import train
from tests.conftest import compose_config, run_sweep


@pytest.fixture(scope="module")
def corpus(cache_dir):
    cfg = compose_config(f"data.cache_dir={cache_dir}")
    root = data.ensure_unpacked(cfg.data)
    return data.load_corpus(
        root,
        list(cfg.data.classes),
        list(cfg.data.channels),
        cfg.data.min_len,
        cfg.data.signer_prefix,
        cache_dir=cache_dir,
    )


def parts_for(corpus, *overrides):
    return data.split(corpus, compose_config(*overrides).split)


@pytest.mark.parametrize(
    "overrides",
    [
        ["split=stratified"],
        ["split=kfold", "split.fold=3"],
        ["split=by_session"],
        ["split=by_session", "split.val_sessions=null"],
        ["split=by_signer"],
        ["split=by_signer", "split.test_signer=HB"],
    ],
)
def test_no_episode_is_in_two_parts_and_every_usable_one_is_used(corpus, overrides):
    parts = parts_for(corpus, *overrides)
    seen = [i for p in data.PARTS for i in parts[p]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {i for i, e in enumerate(corpus.episodes) if e.reason is None}


def test_kfold_test_folds_cover_every_episode_once(corpus):
    tests = [i for k in range(5) for i in parts_for(corpus, "split=kfold", f"split.fold={k}")["test"]]
    assert sorted(tests) == [i for i, e in enumerate(corpus.episodes) if e.reason is None]
    with pytest.raises(ValueError, match="split.fold=5 is outside 0..4"):
        parts_for(corpus, "split=kfold", "split.fold=5")


def test_by_session_holds_out_exactly_the_named_sessions(corpus):
    parts = parts_for(corpus, "split=by_session", "split.test_sessions=[2]", "split.val_sessions=[5]")
    sessions = {
        p: {(corpus.episodes[i].signer, corpus.episodes[i].session) for i in parts[p]} for p in data.PARTS
    }
    assert sessions["test"] == {("HB", "2"), ("JY", "2")} and sessions["val"] == {("HB", "5"), ("JY", "5")}
    assert not sessions["train"] & (sessions["test"] | sessions["val"])
    carved = parts_for(corpus, "split=by_session", "split.val_sessions=null")
    groups = {
        p: {(corpus.episodes[i].signer, corpus.episodes[i].session) for i in carved[p]} for p in data.PARTS
    }
    assert not groups["test"] & (groups["train"] | groups["val"])
    with pytest.raises(ValueError, match="session '9' is not in the data"):
        parts_for(corpus, "split=by_session", "split.test_sessions=[9]")


@pytest.mark.parametrize("held_out, trained_on", [("JY", "HB"), ("HB", "JY")])
def test_by_signer_tests_only_on_the_held_out_signer(corpus, held_out, trained_on):
    parts = parts_for(corpus, "split=by_signer", f"split.test_signer={held_out}")
    signers = {p: Counter(corpus.episodes[i].signer for i in parts[p]) for p in data.PARTS}
    assert set(signers["test"]) == {held_out} and set(signers["train"]) == set(signers["val"]) == {trained_on}
    assert signers["test"][held_out] == sum(
        e.signer == held_out and e.reason is None for e in corpus.episodes
    )


def test_unknown_signer_is_a_clear_error(corpus):
    with pytest.raises(ValueError, match="signer 'XY' is not in the data; known: HB, JY"):
        parts_for(corpus, "split=by_signer", "split.test_signer=XY")


def test_manifest_and_class_counts_match_what_was_trained(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=gru",
        "split=by_signer",
        "split.test_signer=HB",
        "data=no_yaw",
        "trainer=debug",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
    )
    result = train(cfg)
    run = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    with open(tmp_path / "run" / "split_manifest.csv", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f))
    by_part = {p: [r for r in manifest if r["part"] == p] for p in data.PARTS}
    for p in data.PARTS:
        assert len(by_part[p]) == int(run.data.params[f"data.n_{p}"]) == len(result.prepared.arrays[p][0])
    assert {r["signer"] for r in by_part["test"]} == {"HB"} and {r["signer"] for r in by_part["train"]} == {
        "JY"
    }
    trained = [result.prepared.corpus.episodes[i].path for i in result.prepared.parts["train"]]
    assert [r["path"] for r in by_part["train"]] == trained
    with open(tmp_path / "run" / "class_counts.csv", encoding="utf-8") as f:
        counts = {r["jamo"]: r for r in csv.DictReader(f)}
    for p in data.PARTS:
        assert Counter(r["jamo"] for r in by_part[p]) == {
            j: int(c[p]) for j, c in counts.items() if int(c[p])
        }
    assert run.data.params["split.strategy"] == "by_signer" and run.data.params["split.test_signer"] == "HB"
    assert result.prepared.arrays["train"][0].shape[2] == 7 and "yaw" not in run.data.params["data.channels"]


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory, cache_dir):
    """Two models x two seeds, two jobs at a time (the joblib launcher): shared by the report tests."""
    tmp = tmp_path_factory.mktemp("sweep")
    client, runs, stdout = run_sweep(
        tmp,
        cache_dir,
        "model=gru,stacked_gru",
        "seed=1,2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "tracking.log_model=false",
    )
    return client, runs, tmp, stdout


def test_sweep_report_numbers_equal_the_logged_metrics(small_sweep):
    client, runs, tmp, stdout = small_sweep
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    text = (tmp / "sw" / "report" / "report.md").read_text(encoding="utf-8")
    acc = {
        m: [
            r.data.metrics["test/acc"]
            for r in sorted(children, key=lambda r: int(r.data.params["seed"]))
            if r.data.params["model.name"] == m
        ]
        for m in ("gru", "stacked_gru")
    }
    for model, values in acc.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {model} | 2 |"))
        s = summarise(values)
        assert f"{s['mean']:.4f} +- {s['std']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]" in row
    best, other = sorted(acc, key=lambda m: -np.mean(acc[m]))
    p = stats.ttest_rel(acc[best], acc[other]).pvalue
    lead = next(line for line in text.splitlines() if line.startswith(f"| {other} | 2 |") and "/2" in line)
    assert f"{np.mean(np.array(acc[best]) - acc[other]):+.4f}" in lead and f"{p:.4f}" in lead
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert arts == {"report/report.md", "report/confusion_grid.png", "report/per_class_f1.png"}
    assert "Comparison report:" in stdout


def test_a_report_flags_shared_cpu_timings_and_prints_no_empty_paired_tests(small_sweep, tmp_path):
    client, runs, tmp, _ = small_sweep
    selection = tracking_queries.RunSelection(
        filter="params.`model.name` = 'gru'", uri=f"sqlite:///{tmp / 'mlflow.db'}"
    )
    gru_only, _ = tracking_queries.fetch_runs(selection)
    assert all(r["tags"][compare.SHARED_CPU] == "true" for r in gru_only)  # the sweep ran two jobs at once
    for r in gru_only[1:]:
        del r["tags"][compare.SHARED_CPU]
    compare.build_report(gru_only, tmp_path, "one model")
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "paired" not in text  # one model: nothing to pair, so no table of empty tests
    assert "latency ms * |" in text and "1 of 2 runs trained beside other jobs" in text
    head = next(line for line in text.splitlines() if line.startswith("| model | runs |"))
    table = next(line for line in text.splitlines() if line.startswith("| model | seed |"))
    for name in ("test acc", "test bal. acc", "test macro F1", "train s"):  # one name per column
        assert f"| {name} |" in head and f"| {name} |" in table


def test_parallel_launcher_runs_jobs_at_once_under_one_parent(small_sweep):
    _, runs, tmp, _ = small_sweep
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = sorted(
        (r.info for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda i: i.start_time,
    )
    assert len(jobs) == 4 and {i.status for i in jobs} == {"FINISHED"}
    pairs = zip(jobs, jobs[1:], strict=False)
    assert any(a.start_time < b.end_time and b.start_time < a.end_time for a, b in pairs)  # at once
    assert (tmp / "sw" / "report" / "report.md").is_file()


def test_report_command_selects_runs_by_filter(small_sweep, tmp_path):
    client, runs, tmp, _ = small_sweep
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    report.main(["--tracking-uri", uri, "--filter", "params.seed = '2'", "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert text.count("| 1 | 25,624 |") == 1 and re.search(r"^2 finished runs", text, re.M)


def test_report_over_two_sweeps_covers_both_and_is_logged_to_both_parents(small_sweep, cache_dir, tmp_path):
    """A stopped sweep finished by a second one (here: a third GRU seed) gets one report."""
    _, _, tmp, _ = small_sweep
    client, runs, _ = run_sweep(
        tmp,
        cache_dir,
        "model=gru",
        "seed=3",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        name="sw2",
    )
    report.main(
        ["--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--sweep", "sw", "sw2", "--out", str(tmp_path)]
    )
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert re.search(r"^5 finished runs", text, re.M)
    assert re.search(r"^\| gru \| 3 \|", text, re.M) and re.search(r"^\| stacked_gru \| 2 \|", text, re.M)
    parents = [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2
    for run_id in parents:
        (tmp_path / run_id).mkdir()
        logged = Path(client.download_artifacts(run_id, "report/report.md", str(tmp_path / run_id)))
        assert logged.read_text(encoding="utf-8") == text


def test_evaluate_a_run_on_its_own_test_split_reproduces_its_metrics(cli_run, tmp_path):
    client, run, tmp, _ = cli_run
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    metrics = evaluate.main([run.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path)])
    for key in ["acc", "balanced_acc", "f1_macro", "precision_macro", "recall_macro"]:
        assert metrics[f"eval/{key}"] == pytest.approx(run.data.metrics[f"test/{key}"], abs=1e-6)
    (ev,) = client.search_runs(
        [run.info.experiment_id],
        f"tags.`signglove.source_run` = '{run.info.run_id}' and tags.`signglove.kind` = 'evaluation'",
    )
    assert ev.data.metrics["eval/acc"] == pytest.approx(metrics["eval/acc"])
    assert {a.path for a in client.list_artifacts(ev.info.run_id)} >= {
        "per_class.csv",
        "predictions.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
    }


def test_evaluate_refuses_data_that_does_not_fit_the_model(cli_run, corpus, tmp_path):
    client, run, tmp, _ = cli_run
    folder = tmp_path / "other" / "ㄱ" / "1"
    folder.mkdir(parents=True)
    src = corpus.root / corpus.episodes[0].path
    lines = src.read_text(encoding="utf-8").splitlines()
    (folder / "episode_noyaw.csv").write_text(
        "\n".join([lines[0].replace("yaw", "heading"), *lines[1:]]), encoding="utf-8"
    )
    stray = tmp_path / "other" / "ㅘ" / "1"
    stray.mkdir(parents=True)
    shutil.copy(src, stray / "episode_x.csv")
    with pytest.raises(ValueError, match=r"2 episode file\(s\).*episode_noyaw.csv: missing column\(s\) yaw"):
        evaluate.main(
            [
                run.info.run_id,
                "--tracking-uri",
                f"sqlite:///{tmp / 'mlflow.db'}",
                "--data",
                str(tmp_path / "other"),
            ]
        )
