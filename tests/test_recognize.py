"""Models in use: recognition from files and live streams, the pyfunc model, ONNX export."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signglove_exp import PROJECT_DIR, data, legacy, recognize
from signglove_exp.inference.onnx_export import export_onnx
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.inference.stream import StreamSettings, recognise_stream, stream_rows
from tests.conftest import compose_config

REFERENCE = PROJECT_DIR / "data" / "pretrained" / "gru-reference.ckpt"


@pytest.fixture(scope="module")
def test_split(cache_dir):
    """The reference test split's episodes (unseen by the reference model), in a seeded random order."""
    cfg = compose_config(f"data.cache_dir={cache_dir}")
    corpus = data.load_corpus(
        data.ensure_unpacked(cfg.data.root, cfg.data.archive),
        list(cfg.data.classes),
        list(cfg.data.channels),
        cfg.data.min_len,
        cfg.data.signer_prefix,
        cache_dir=cache_dir,
    )
    episodes = [corpus.episodes[i] for i in data.split(corpus, cfg.split)["test"]]
    random.Random(0).shuffle(episodes)
    return corpus.root, episodes


def edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (x != y))
    return row[-1]


def replay_lines(root: Path, episodes) -> list[str]:
    """The episodes back to back as one glove stream: one header, then every sample line."""
    texts = [(root / e.path).read_text(encoding="utf-8").splitlines() for e in episodes]
    return [texts[0][0]] + [line for t in texts for line in t[1:]]


def test_stream_replayed_as_fast_as_possible_emits_the_replayed_jamo(test_split):
    root, episodes = test_split  # all 577 test episodes, back to back
    rec = Recognizer.load(REFERENCE)
    emitted = [
        e["jamo"]
        for e in recognise_stream(
            rec, stream_rows(replay_lines(root, episodes), rec.channels), StreamSettings()
        )
    ]
    assert edit_distance(emitted, [e.jamo for e in episodes]) <= 0.05 * len(episodes)


def test_stream_at_the_gloves_pace_through_follow(test_split, tmp_path):
    root, episodes = test_split
    episodes = episodes[:24]  # about 45 s of signing
    lines = replay_lines(root, episodes)
    capture = tmp_path / "glove.csv"
    capture.write_text(lines[0] + "\n", encoding="utf-8")

    def glove():  # one sample per line, at the recorded timestamps' pace
        with open(capture, "a", encoding="utf-8") as f:
            previous = None
            for line in lines[1:]:
                stamp = float(line.split(",")[0])
                if previous is not None and 0 < stamp - previous < 200:
                    time.sleep((stamp - previous) / 1000)
                previous = stamp
                f.write(line + "\n")
                f.flush()

    writer = threading.Thread(target=glove)
    started = time.time()
    writer.start()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "signglove_exp.recognize",
            str(REFERENCE),
            "--stream",
            str(capture),
            "--follow",
            "--idle",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    writer.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - started > 0.02 * (len(lines) - 1)  # it really ran at the glove's pace
    emitted = [line.split("\t")[1] for line in proc.stdout.splitlines() if line.count("\t") == 2]
    assert edit_distance(emitted, [e.jamo for e in episodes]) <= 0.05 * len(episodes)
    rec = Recognizer.load(REFERENCE)
    fast = [e["jamo"] for e in recognise_stream(rec, stream_rows(lines, rec.channels), StreamSettings())]
    assert emitted == fast  # the pace of arrival does not change what is recognised


def test_a_malformed_stream_line_is_reported_and_skipped(capsys):
    rows = list(stream_rows(["flex1,flex2", "1,2", "1,oops", "3,4"], ["flex1", "flex2"]))
    assert [r.tolist() for r in rows] == [[1, 2], [3, 4]]
    assert "stream line 3: skipped" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stream header lacks column"):
        next(stream_rows(["flex1", "1"], ["flex1", "flex2"]))


def test_recognition_from_a_run_id_reproduces_its_logged_test_accuracy(cli_run, test_split, tmp_path):
    client, run, tmp, _ = cli_run
    root, episodes = test_split
    out = tmp_path / "predictions.csv"
    rows = recognize.main(
        [
            run.info.run_id,
            *(str(root / e.path) for e in episodes),
            "--out",
            str(out),
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
        ]
    )
    accuracy = np.mean([r["jamo"] == e.jamo for r, e in zip(rows, episodes, strict=True)])
    assert accuracy == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)  # MLflow keeps float32
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "jamo", "latency_ms", "top1", "top2", "top3"] and len(table) == 577


def test_a_file_that_does_not_fit_the_model_names_the_file(tmp_path):
    bad = tmp_path / "episode_x.csv"
    bad.write_text("flex1,flex2\n1,2\n", encoding="utf-8")
    with pytest.raises(data.BadEpisodeError, match=r"episode_x.csv: missing column\(s\) flex3"):
        Recognizer.load(REFERENCE).predict_files([bad])


def test_pyfunc_model_predicts_raw_samples_and_registers(cli_run, test_split):
    client, run, tmp, _ = cli_run
    root, episodes = test_split
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    frames = [pd.read_csv(root / e.path).assign(episode=e.path) for e in episodes[:5]]
    out = model.predict(pd.concat(frames))
    rec = Recognizer.from_run(run.info.run_id, f"sqlite:///{tmp / 'mlflow.db'}")
    assert out["jamo"].tolist() == [p.jamo for p in rec.predict_files([root / e.path for e in episodes[:5]])]
    assert out["episode"].tolist() == [e.path for e in episodes[:5]]
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "signglove-gru")
    registered = Recognizer.load("models:/signglove-gru/1", f"sqlite:///{tmp / 'mlflow.db'}")
    assert registered.predict_files([root / episodes[0].path])[0].jamo == out["jamo"][0]
    assert (
        int(version.version) == 1
        and MlflowClient().get_registered_model("signglove-gru").name == "signglove-gru"
    )


@pytest.mark.parametrize("name", sorted(p.name for p in (PROJECT_DIR / "data" / "legacy").glob("*.ckpt")))
def test_onnx_export_matches_pytorch_on_real_episodes(name, test_split, tmp_path):
    root, episodes = test_split
    cfg = compose_config()
    scaler = legacy.read_scaler_pickle(
        PROJECT_DIR / "data" / "legacy" / "scaler.pkl", list(cfg.data.channels)
    )
    net, card = legacy.import_checkpoint(PROJECT_DIR / "data" / "legacy" / name, scaler, cfg)
    torch_rec = Recognizer.from_torch(net, card)
    onnx_rec = Recognizer.from_onnx(export_onnx(net, card, tmp_path / "model.onnx"))
    values = [e.values for e in episodes[:150]]
    values[0] = values[0][:20]  # a short episode too, exercising the padding and readout
    p_torch, p_onnx = torch_rec.probabilities(values), onnx_rec.probabilities(values)
    assert np.abs(p_torch - p_onnx).max() <= 1e-5
    assert onnx_rec.card == card
