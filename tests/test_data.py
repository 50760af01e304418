"""The data path on the real episodes: discovery, bad files, the reference split, the scaler."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from signglove_exp import data
from tests.conftest import compose_config

ONE_ROW = "unified_HB/ㅊ/3/episode_20251001_154132_ㅊ_3.csv"


@pytest.fixture(scope="module")
def prepared(cache_dir):
    cfg = compose_config(f"data.cache_dir={cache_dir}")
    return data.prepare(cfg.data, cfg.split)


def test_discovers_every_episode_with_class_signer_and_session(prepared):
    corpus = prepared.corpus
    assert len(corpus.episodes) == 2884
    assert {e.signer for e in corpus.episodes} == {"HB", "JY"}
    assert sum(e.signer == "JY" for e in corpus.episodes) == 1440  # the extra JY/ level is coped with
    assert {e.session for e in corpus.episodes} == {"1", "2", "3", "4", "5"}
    for e in corpus.episodes[::97]:
        assert f"/{e.jamo}/{e.session}/" in f"/{e.path}" and e.jamo == corpus.classes[e.label]


def test_the_one_row_episode_is_reported_not_used(prepared):
    assert prepared.corpus.rejected == [(ONE_ROW, "too short: 1 rows < data.min_len=10")]
    used = {prepared.corpus.episodes[i].path for idx in prepared.parts.values() for i in idx}
    assert ONE_ROW not in used and len(used) == 2883


def test_reference_split_reproduces_upstreams_partition(prepared):
    eps = prepared.corpus.episodes
    bundled = Path(__file__).parent / "upstream-split"
    for part in data.PARTS:
        upstream = set((bundled / f"{part}.txt").read_text(encoding="utf-8").split())
        ours = {Path(eps[i].path).name for i in prepared.parts[part]}
        assert ours == upstream - {Path(ONE_ROW).name}, part
    assert [len(prepared.parts[p]) for p in data.PARTS] == [1729, 577, 577]


def test_scaler_is_fitted_on_the_train_splits_real_steps_only(prepared):
    root, channels = prepared.corpus.root, prepared.corpus.channels
    steps = []
    for i in prepared.parts["train"]:
        path = root / prepared.corpus.episodes[i].path
        header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
        steps.append(
            np.loadtxt(path, delimiter=",", skiprows=1, usecols=[header.index(c) for c in channels], ndmin=2)
        )
    reference = StandardScaler().fit(np.concatenate(steps))
    np.testing.assert_allclose(prepared.scaler["mean"], reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(prepared.scaler["scale"], reference.scale_, rtol=1e-12)
    assert prepared.scaler["n_samples_seen"] == reference.n_samples_seen_
    assert prepared.scaler["channels"] == list(channels)


def test_arrays_are_scaled_then_padded_with_a_length_per_case(prepared):
    x, lengths, labels = prepared.arrays["train"]
    assert x.shape == (1729, 87, 8) and x.dtype == np.float32
    assert lengths.max() == 80 and lengths.min() == 20
    short = int(np.argmin(lengths))
    assert np.all(x[short, 20:] == 0.0) and np.any(x[short, :20] != 0.0)
    train_steps = np.concatenate([x[i, : lengths[i]] for i in range(len(x))]).astype(np.float64)
    np.testing.assert_allclose(train_steps.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train_steps.std(0), 1, atol=1e-4)
    assert sorted(set(labels.tolist())) == list(range(24))


def _copy_real(root: Path, dest_root: Path, n_per_class: int = 2) -> list[Path]:
    copied = []
    for cls_dir in sorted((root / "unified_HB").iterdir())[:3]:
        for f in sorted((cls_dir / "1").glob("*.csv"))[:n_per_class]:
            target = dest_root / "unified_XX" / cls_dir.name / "1" / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
            copied.append(target)
    return copied


def test_malformed_episodes_are_reported_with_file_and_reason(prepared, tmp_path):
    root = tmp_path / "episodes"
    good = _copy_real(prepared.corpus.root, root)
    lines = good[0].read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    folder = good[0].parent

    def write(name, text):
        (folder / name).write_text(text, encoding="utf-8")

    def with_value(row: str, column: str, value: str) -> str:
        fields = row.split(",")
        fields[header.split(",").index(column)] = value
        return ",".join(fields)

    write("episode_nan.csv", "\n".join([header, *rows[:5], with_value(rows[5], "flex1", "nan"), *rows[6:]]))
    write("episode_text.csv", "\n".join([header, *rows[:3], with_value(rows[3], "pitch", "abc"), *rows[4:]]))
    write("episode_nocol.csv", "\n".join([header.replace("flex3", "flexX"), *rows]))
    write("episode_short.csv", "\n".join([header, *rows[:3]]))
    write("episode_empty.csv", "")
    write("episode_ragged.csv", "\n".join([header, *rows[:4], rows[4] + ",1", *rows[5:]]))
    (folder / "episode_binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    stray = root / "unified_XX" / "ㅄ" / "1" / "episode_unknown.csv"
    stray.parent.mkdir(parents=True)
    shutil.copy(good[0], stray)
    look_alike = root / "unified_XX" / "\u1100" / "1" / "episode_look_alike.csv"  # not U+3131, drawn the same
    look_alike.parent.mkdir(parents=True)
    shutil.copy(good[0], look_alike)

    corpus = data.load_corpus(root, prepared.corpus.classes, prepared.corpus.channels, 10, "unified_")
    reasons = {Path(p).name: r for p, r in corpus.rejected}
    assert set(reasons) == {
        "episode_nan.csv",
        "episode_text.csv",
        "episode_nocol.csv",
        "episode_short.csv",
        "episode_empty.csv",
        "episode_ragged.csv",
        "episode_binary.csv",
        "episode_unknown.csv",
        "episode_look_alike.csv",
    }
    assert "non-finite value 'nan'" in reasons["episode_nan.csv"] and "line 7" in reasons["episode_nan.csv"]
    assert reasons["episode_text.csv"] == "line 5: non-numeric value 'abc' in column pitch"
    assert reasons["episode_nocol.csv"] == "missing column(s) flex3"
    assert reasons["episode_short.csv"] == "too short: 3 rows < data.min_len=10"
    assert reasons["episode_empty.csv"] == "empty file"
    assert "fields, header has" in reasons["episode_ragged.csv"]
    assert reasons["episode_binary.csv"].startswith("unreadable")
    assert reasons["episode_unknown.csv"] == "class folder 'ㅄ' (U+3144) is not in data.classes"
    assert reasons["episode_look_alike.csv"] == (
        "class folder '\u1100' (U+1100) is not in data.classes; it looks like 'ㄱ' (U+3131), which is"
    )
    usable = [e for e in corpus.episodes if e.reason is None]
    assert {Path(e.path).name for e in usable} == {g.name for g in good}
    assert all(e.signer == "XX" for e in corpus.episodes)

    with pytest.raises(data.BadEpisodeError, match=r"episode_.*\.csv: "):
        data.load_corpus(root, prepared.corpus.classes, prepared.corpus.channels, 10, "unified_", "raise")


def test_cache_returns_what_parsing_returns(prepared, tmp_path):
    root = tmp_path / "episodes"
    _copy_real(prepared.corpus.root, root, n_per_class=3)
    (root / "unified_XX" / "ㄱ" / "1" / "episode_bad.csv").write_text("flex1\n1\n", encoding="utf-8")
    args = (
        root,
        prepared.corpus.classes,
        prepared.corpus.channels,
        10,
        "unified_",
        "skip",
        tmp_path / "cache",
    )
    first, second = data.load_corpus(*args), data.load_corpus(*args)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert second.rejected == first.rejected and second.fingerprint == first.fingerprint
    for a, b in zip(first.episodes, second.episodes, strict=True):
        assert (a.path, a.label, a.signer, a.session, a.reason) == (
            b.path,
            b.label,
            b.signer,
            b.session,
            b.reason,
        )
        assert (a.values is None and b.values is None) or np.array_equal(a.values, b.values)


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.ensure_unpacked(compose_config(f"data.root={tmp_path / 'nowhere'}").data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no episode_"):
        data.load_corpus(tmp_path / "empty", ["ㄱ"], ["flex1"], 1)
