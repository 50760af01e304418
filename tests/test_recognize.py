"""Models in use: recognition from files and live streams, the pyfunc model, ONNX export."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from signglove_exp import BUNDLED_DIR, data, export, recognize
from signglove_exp.inference.onnx_export import export_onnx
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.inference.stream import StreamSettings, recognise_stream, stream_rows
from signglove_exp.tracking.queries import download_checkpoint
from signglove_exp.upstream.convert import import_checkpoint
from signglove_exp.upstream.scaler import read_scaler_pickle
from tests.conftest import compose_config, run_module

REFERENCE = BUNDLED_DIR / "pretrained" / "gru-reference.ckpt"


@pytest.fixture(scope="module")
def test_split(cache_dir):
    """The reference test split's episodes (unseen by the reference model), in a seeded random order."""
    cfg = compose_config(f"data.cache_dir={cache_dir}")
    corpus = data.load_corpus(
        data.ensure_unpacked(cfg.data),
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
    episodes = episodes[:2]  # about 3 s of signing
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
    follow = ["--stream", str(capture), "--follow", "--idle", "2"]
    proc = run_module("signglove_exp.recognize", str(REFERENCE), *follow, cwd=tmp_path)
    writer.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - started > 0.02 * (len(lines) - 1)  # it really ran at the glove's pace
    emitted = [line.split("\t")[1] for line in proc.stdout.splitlines() if line.count("\t") == 2]
    assert edit_distance(emitted, [e.jamo for e in episodes]) <= 1
    rec = Recognizer.load(REFERENCE)
    fast = [e["jamo"] for e in recognise_stream(rec, stream_rows(lines, rec.channels), StreamSettings())]
    assert emitted == fast  # the pace of arrival does not change what is recognised


def test_a_malformed_stream_line_is_reported_and_skipped(capsys):
    rows = list(stream_rows(["flex1,flex2", "1,2", "1,oops", "3,4"], ["flex1", "flex2"]))
    assert [r.tolist() for r in rows] == [[1, 2], [3, 4]]
    assert "stream line 3: skipped" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stream line 1: header lacks column"):
        next(stream_rows(["flex1", "1"], ["flex1", "flex2"]))


def reordered(lines: list[str], at: int) -> list[str]:
    """The stream with a glove restarted at line `at` whose firmware sends the columns reversed."""
    flip = [",".join(line.split(",")[::-1]) for line in [lines[0], *lines[at:]]]
    return lines[:at] + flip


def stream_command(stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return run_module(
        "signglove_exp.recognize", str(REFERENCE), "--stream", *args, cwd=Path.cwd(), stdin=stdin
    )


def test_a_header_mid_stream_is_reread(test_split, capsys):
    root, episodes = test_split
    rec = Recognizer.load(REFERENCE)
    lines = replay_lines(root, episodes[:10])
    at = 1 + sum(len(e.values) for e in episodes[:5])  # about where episode 6 starts

    def jamo(stream):
        return [e["jamo"] for e in recognise_stream(rec, stream_rows(stream, rec.channels), StreamSettings())]

    expected = jamo(lines)
    assert len(expected) >= 8 and jamo(reordered(lines, at)) == expected
    assert f"stream line {at + 1}: new header, columns re-read" in capsys.readouterr().err
    assert jamo(lines[:at] + lines[:1] + lines[at:]) == expected
    assert f"stream line {at + 1}: same header again" in capsys.readouterr().err
    lacking = lines[:at] + [lines[0].replace("flex3", "flex9")] + lines[at:]
    with pytest.raises(ValueError, match=rf"stream line {at + 1}: header lacks column\(s\) flex3"):
        jamo(lacking)
    proc = stream_command("\n".join(lacking).encode(), "-")  # the signs before it, then a one-line refusal
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == len(jamo(lines[:at]))
    assert proc.stderr.splitlines()[-1].startswith(f"Error: stream line {at + 1}: header lacks")


def test_bad_stream_lines_are_skipped_with_a_note(capsys):
    good = ["flex1,flex2", "1,2"]
    bad = [b"3,\xff4", "5," + "6" * 300_000, "7,8\r9,10", "11", "12,inf", "flex2,x,flex1"]
    rows = list(stream_rows([*good, *bad, "13,0,14"], ["flex1", "flex2"]))
    assert [r.tolist() for r in rows] == [[1, 2], [14, 13]]
    notes = capsys.readouterr().err.splitlines()
    assert [n.split(":")[0] for n in notes] == [f"stream line {n}" for n in (3, 4, 5, 6, 7, 8)]
    assert "can't decode byte 0xff" in notes[0] and "longer than" in notes[1] and len(notes[1]) < 200
    assert "new-line character" in notes[2] and "1 fields, header has 2" in notes[3]
    assert "non-finite" in notes[4] and "new header" in notes[5]


def test_the_stream_command_survives_bad_lines_and_a_restarted_glove(test_split):
    root, episodes = test_split
    rec = Recognizer.load(REFERENCE)
    lines = replay_lines(root, episodes[:8])
    at = 1 + sum(len(e.values) for e in episodes[:4])
    expected = [e["jamo"] for e in recognise_stream(rec, stream_rows(lines, rec.channels), StreamSettings())]
    noisy = [line.encode() for line in reordered(lines, at)]
    noisy[3:3] = [b"", b"1,2,\xc3\x28", b"1," + b"0" * 300_000, b"12,34"]  # blank, not UTF-8, huge, short
    proc = stream_command(b"\n".join(noisy) + b"\n", "-")
    assert proc.returncode == 0, proc.stderr[-3000:]
    emitted = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    assert len(expected) >= 6 and emitted == expected
    notes = proc.stderr
    assert all(f"stream line {n}: skipped" in notes for n in (5, 6, 7))
    assert f"stream line {at + 5}: new header, columns re-read" in notes


def test_an_empty_stream_ends_cleanly(tmp_path):
    assert list(stream_rows([], ["flex1"])) == []
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    for proc in (stream_command(b"", "-"), stream_command(b"", str(empty))):
        assert proc.returncode == 0 and proc.stdout == "", proc.stderr[-3000:]
        assert proc.stderr.splitlines() == ["stream: ended without a header line, nothing to recognise"]


def test_recognition_keeps_the_good_files_and_lists_the_bad_ones(test_split, tmp_path):
    root, episodes = test_split
    folder = tmp_path / "episodes"
    folder.mkdir()
    for i, e in enumerate(episodes[:3]):
        (folder / f"good_{i}.csv").write_bytes((root / e.path).read_bytes())
    (folder / "bad_a.csv").write_text("flex1,flex2\n1,2\n", encoding="utf-8")
    (folder / "bad_b.csv").write_bytes(b"\xff\xfe")
    out = tmp_path / "predictions.csv"
    proc = run_module("signglove_exp.recognize", str(REFERENCE), str(folder), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["file", "jamo", "latency_ms", "top1", "top2", "top3", "problem"]
    assert table["file"].tolist() == [
        str(folder / n) for n in ["bad_a.csv", "bad_b.csv", "good_0.csv", "good_1.csv", "good_2.csv"]
    ]
    expected = [p.jamo for p in Recognizer.load(REFERENCE).predict_files(table["file"][2:])]
    assert table["jamo"].tolist() == ["", "", *expected] and table["problem"][2:].tolist() == ["", "", ""]
    assert table["problem"][0].startswith("missing column(s) flex3")
    assert table["problem"][1].startswith("unreadable")
    assert f"{folder / 'bad_a.csv'}: missing column(s)" in proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def test_a_truncated_cached_checkpoint_is_downloaded_again(cli_run, tmp_path):
    client, run, tmp, _ = cli_run
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    fresh = Path(client.download_artifacts(run.info.run_id, "checkpoints", str(tmp_path / "fresh")))
    (whole,) = fresh.glob("*.ckpt")
    cached = download_checkpoint(run.info.run_id, uri, tmp_path / "cache")
    assert cached.read_bytes() == whole.read_bytes()
    cached.write_bytes(whole.read_bytes()[:1000])  # a download killed half way, in the old code
    assert download_checkpoint(run.info.run_id, uri, tmp_path / "cache") == cached
    assert cached.read_bytes() == whole.read_bytes() and "state_dict" in torch.load(cached, weights_only=True)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]  # no temporary left behind


def test_export_of_a_run_goes_beside_its_cached_checkpoint(cli_run, tmp_path, monkeypatch):
    client, run, tmp, _ = cli_run
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = export.main(
        [
            run.info.run_id,
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--outputs",
            str(tmp_path / "out"),
        ]
    )
    folder = tmp_path / "out" / "models" / run.info.run_id
    (ckpt,) = folder.glob("*.ckpt")
    assert path == folder / f"{Recognizer.from_onnx(path).card.name}.onnx" and path.is_file()
    assert Recognizer.from_onnx(path).card == Recognizer.load(ckpt).card
    assert list(cwd.iterdir()) == []
    with pytest.raises(ValueError, match="int8: gru has no convolutions to quantize"):
        export.main([str(ckpt), "--int8", "16", "--out", str(tmp_path / "int8.onnx")])


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
    columns = ["file", "jamo", "latency_ms", "top1", "top2", "top3", "problem"]
    assert list(table.columns) == columns and len(table) == 577


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


def test_the_logged_model_carries_its_code_and_checkpoint_only(cli_run, tmp_path):
    """Under 1 MB: no copy of the bundled episodes, upstream's checkpoints, configs or fonts per run."""
    client, run, tmp, _ = cli_run
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    (logged,) = client.get_run(run.info.run_id).outputs.model_outputs
    mlflow.set_tracking_uri(uri)  # models:/ is resolved through the global URI
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}", dst_path=str(tmp_path)))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    assert {p.suffix for p in files} <= {".py", ".ckpt", ".json", ".txt", ".yaml", ".csv", ""}
    assert not {"signglove.tar.xz", "scaler.pkl", "config.yaml"} & {p.name for p in files}
    assert any(p.name == "recognizer.py" for p in files)


@pytest.mark.parametrize("name", sorted(p.name for p in (BUNDLED_DIR / "legacy").glob("*.ckpt")))
def test_onnx_export_matches_pytorch_on_real_episodes(name, test_split, tmp_path):
    root, episodes = test_split
    cfg = compose_config()
    scaler = read_scaler_pickle(BUNDLED_DIR / "legacy" / "scaler.pkl", list(cfg.data.channels))
    net, card = import_checkpoint(BUNDLED_DIR / "legacy" / name, scaler, cfg)
    torch_rec = Recognizer.from_torch(net, card)
    onnx_rec = Recognizer.from_onnx(export_onnx(net, card, tmp_path / "model.onnx"))
    values = [e.values for e in episodes[:150]]
    values[0] = values[0][:20]  # a short episode too, exercising the padding and readout
    p_torch, p_onnx = torch_rec.probabilities(values), onnx_rec.probabilities(values)
    assert np.abs(p_torch - p_onnx).max() <= 1e-5
    assert onnx_rec.card == card


def test_a_held_sign_longer_than_the_window_is_read_whole_and_its_windows_vote(test_split, tmp_path):
    """Recording tools also write 300-sample episodes of a held sign: a model reads windows of its
    sequence length, half a window apart, the last ending with the episode, and averages their
    probabilities; on every path (PyTorch, ONNX, evaluation, calibration), and an episode that fits
    is read exactly as before."""
    root, episodes = test_split
    rec = Recognizer.load(REFERENCE)
    held = [e for e in episodes[:40] if len(e.values) == 80][:3]
    long = np.concatenate([held[0].values, np.repeat(held[0].values[-1:], 220, axis=0)])  # 300 samples, held
    parts, owners = data.windows([long, held[1].values], rec.card.seq_len)
    assert [len(p) for p in parts] == [87] * 6 + [80] and owners.tolist() == [0] * 6 + [1]
    assert np.array_equal(parts[5], long[-87:])  # the last window ends with the episode
    expected = rec.run(*data.model_inputs(parts[:6], rec.card)).mean(0)
    np.testing.assert_allclose(rec.probabilities([long])[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(
        rec.probabilities([held[1].values]), rec.run(*data.model_inputs([held[1].values], rec.card))
    )
    onnx = Recognizer.from_onnx(export_onnx(rec.net, rec.card, tmp_path / "m.onnx"))
    np.testing.assert_allclose(
        onnx.probabilities([long, held[2].values]), rec.probabilities([long, held[2].values]), atol=1e-5
    )
    from signglove_exp.training.adapt import adapt, evaluate

    label = rec.classes.index(held[0].jamo)
    assert evaluate(rec.net, rec.card, [long], np.array([label]))["acc"] == float(expected.argmax() == label)
    _, card = adapt(rec.net, rec.card, [long], np.array([label]), "renorm", {})
    assert card.scaler["n_samples_seen"] == 6 * 87  # the six windows calibrated
