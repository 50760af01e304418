"""Every command in the README's command blocks works as written, in a fresh folder, as a user types it.

Commands that train for minutes run composed only (`--cfg job`, the first job of a multirun); the
others run for real after a short training run in the same folder, with the README's placeholders
(RUN_ID, a.csv, ...) replaced by real things. A README command missing from CHECKS fails the test.
`python -m` commands run in this process, as `python -m` runs them (`run_line`); `mlflow models
predict` and `mlflow models serve` run in a real shell (and test_package runs the training command
as a real process of an installed wheel).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signglove_exp import BUNDLED_DIR, PACKAGE_DIR
from signglove_exp.inference.recognizer import Recognizer
from tests.conftest import cli_env, episodes_root, free_port, run_line

README = PACKAGE_DIR.parent / "README.md"
COMPOSE, RUN, MAKE, SERVE = "compose", "run", "make", "serve"
LIVE = (
    "live"  # run as written with a pseudo-terminal glove for /dev/ttyACM0: tests/test_live.py, test_glove.py
)
CHECKS = {
    "make train": MAKE,  # the README's own two commands: CI runs `make test`; `make train` is timed by hand
    "make test": MAKE,
    "make server": MAKE,
    "make serve": MAKE,
    "python -m signglove_exp.recognize model.ckpt --serial /dev/ttyACM0": LIVE,
    "python -m signglove_exp.serve model.ckpt --serial /dev/ttyACM0": LIVE,
    "python -m signglove_exp": COMPOSE,
    "python -m signglove_exp model=ms3d_stacked_gru": COMPOSE,
    "python -m signglove_exp model=gru seed=7 optimizer.lr=3e-3 trainer.max_epochs=50": COMPOSE,
    "python -m signglove_exp trainer=debug": RUN,
    "python -m signglove_exp sweep=all_models": COMPOSE,
    "python -m signglove_exp -m model=gru,stacked_gru seed=1,2,3": COMPOSE,
    "python -m signglove_exp --cfg job": RUN,
    "python -m signglove_exp resume=outputs/runs/2026-11-26_08-00-00_gru_4242": RUN,
    "python -m signglove_exp init_from=RUN_ID finetune.train=head": RUN,
    "python -m signglove_exp resume=RUN_FOLDER": RUN,
    "python -m signglove_exp.upload outputs/runs/2026-11-26_08-00-00_gru_4242": RUN,
    "python -m signglove_exp sweep=seeds": COMPOSE,
    "python -m signglove_exp sweep=folds": COMPOSE,
    "python -m signglove_exp sweep=signers": COMPOSE,
    "python -m signglove_exp sweep=signers data=no_yaw": COMPOSE,
    "python -m signglove_exp sweep=seeds hydra/launcher=joblib hydra.launcher.n_jobs=2": COMPOSE,
    "python -m signglove_exp split=by_signer data.normalize=per_signer augment.gain=0.1 augment.offset=0.3": (
        COMPOSE
    ),
    "python -m signglove_exp sweep=calibration": COMPOSE,
    "python -m signglove_exp sweep=calibration model=gru calibration.shots=[5]": COMPOSE,
    "python -m signglove_exp.calibrate model.ckpt --data /path/to/new/signer --shots 1": RUN,
    "python -m signglove_exp.search search=gru search.n_trials=20": RUN,
    "python -m signglove_exp sweep=seeds hydra/launcher=slurm hydra.launcher.partition=cpu": COMPOSE,
    "python -m signglove_exp.report --sweep 2026-11-25_10-05-39": RUN,
    "python -m signglove_exp.report --filter \"params.split.strategy = 'by_signer'\"": RUN,
    "python -m signglove_exp.evaluate RUN_ID": RUN,
    "python -m signglove_exp.evaluate RUN_ID --data /path/to/new/signer": RUN,
    "python -m signglove_exp.describe RUN_ID": RUN,
    "python -m signglove_exp.recognize RUN_ID a.csv folder/ --out predictions.csv": RUN,
    "python -m signglove_exp.recognize model.ckpt --stream -": RUN,
    "python -m signglove_exp.recognize model.ckpt --stream capture.csv --follow": RUN,
    "python -m signglove_exp.export RUN_ID --out gru.onnx": RUN,
    "python -m signglove_exp.recognize gru.onnx a.csv": RUN,
    "MLFLOW_TRACKING_URI=sqlite:///$PWD/outputs/mlflow.db mlflow models predict -m runs:/RUN_ID/model "
    "-i episode.csv -t csv --env-manager local": RUN,
    "MLFLOW_TRACKING_URI=sqlite:///$PWD/outputs/mlflow.db mlflow models serve -m runs:/RUN_ID/model "
    "--env-manager local --host 127.0.0.1 --port 5001": SERVE,
}
SHORT = ["trainer.max_epochs=2", "trainer.limit_train_batches=3"]  # appended to the training commands run


def readme_commands() -> list[str]:
    """Each line of each ```bash block, comments and surplus spaces removed."""
    text = README.read_text(encoding="utf-8")
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    return [" ".join(line.split("  #")[0].split()) for line in lines if line.strip()]


def test_every_readme_command_is_checked():
    assert set(readme_commands()) == set(CHECKS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A user's folder after `python -m signglove_exp trainer=debug`, with a few episodes to recognise."""
    home = tmp_path_factory.mktemp("user")
    episodes = sorted(episodes_root().rglob("episode_*.csv"))[::400]
    (home / "folder").mkdir()
    for i, f in enumerate(episodes):
        shutil.copy(f, home / "folder" / f"{i}.csv")
    shutil.copy(episodes[0], home / "a.csv")
    shutil.copy(episodes[1], home / "episode.csv")
    shutil.copy(episodes[2], home / "capture.csv")
    shutil.copy(BUNDLED_DIR / "pretrained" / "gru-reference.ckpt", home / "model.ckpt")
    signer = home / "new-signer" / "unified_XY"
    for jamo in sorted((episodes_root() / "unified_JY" / "JY").iterdir()):  # an episode of every class
        for f in sorted(jamo.rglob("episode_*.csv"))[:1]:
            rel = f.relative_to(episodes_root())
            target = signer.joinpath(*rel.parts[-3:])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    first = run_line("python -m signglove_exp trainer=debug " + " ".join(SHORT), home)
    assert first.returncode == 0, first.stderr[-3000:]
    return home


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command through a shell, with this interpreter's folder first on PATH (python, mlflow)."""
    env = cli_env() | {"PATH": f"{Path(sys.executable).parent}:{cli_env()['PATH']}"}
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def as_run(command: str, home: Path) -> str:
    """The README's placeholders replaced by the real run, folder and sweep of `home`."""
    client = MlflowClient(f"sqlite:///{home / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("signglove").experiment_id
    runs = client.search_runs([experiment], order_by=["start_time"])
    run_id = runs[0].info.run_id
    run_folder = runs[0].data.tags["signglove.run_dir"]
    sweeps = sorted((home / "outputs" / "multirun").glob("*"))
    command = command.replace("outputs/runs/2026-11-26_08-00-00_gru_4242", run_folder)
    command = command.replace("RUN_FOLDER", run_folder)
    command = command.replace("2026-11-25_10-05-39", sweeps[0].name if sweeps else "none")
    command = command.replace("RUN_ID", run_id).replace("/path/to/new/signer", str(home / "new-signer"))
    if command.startswith("python -m signglove_exp ") and "=" in command and "resume=" not in command:
        command += " trainer=debug " + " ".join(SHORT)
    if command.startswith("python -m signglove_exp.search"):  # two short trials, not twenty long ones
        command = command.replace("n_trials=20", "n_trials=2") + " trainer=debug " + " ".join(SHORT)
    if "--follow" in command:
        command += " --idle 1"  # the README's follows a glove forever; here the file stops growing
    return command


def test_training_commands_compose_as_written(tmp_path):
    failed = []
    for command in [c for c, how in CHECKS.items() if how == COMPOSE]:
        words = command.split()
        first_job = [w.split(",")[0] for i, w in enumerate(words) if not (i > 1 and w == "-m")]
        proc = run_line(" ".join(first_job) + " --cfg job", tmp_path)
        if proc.returncode != 0 or "seed:" not in proc.stdout:
            failed.append(f"{command}\n  -> exit {proc.returncode}: {proc.stderr.strip()[-600:]}")
    assert not failed, "\n".join(failed)


def test_readme_commands_run_as_written(folder):
    if not (folder / "outputs" / "multirun").exists():  # a sweep for `report --sweep`
        two = "python -m signglove_exp -m split=stratified,by_signer trainer=debug tracking.log_model=false"
        sweep = run_line(f"{two} {' '.join(SHORT)}", folder)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
    failed = []
    for command, how in CHECKS.items():
        if how != RUN:
            continue
        line = as_run(command, folder)
        if line.startswith("python -m "):
            stdin = (folder / "capture.csv").read_bytes() if "--stream -" in command else None
            proc = run_line(line, folder, stdin)
        else:  # mlflow's own command line
            proc = shell(line, folder)
        if proc.returncode != 0:
            failed.append(f"{command}\n  -> exit {proc.returncode}: {proc.stderr.strip()[-600:]}")
    assert not failed, "\n".join(failed)
    assert not (folder / "mlflow.db").exists() and not (folder / "mlruns").exists()  # no stray stores
    assert (folder / "predictions.csv").is_file() and (folder / "gru.onnx").is_file()


def test_the_serving_command_answers_a_real_episode_as_recognize_does(folder, spawn):
    """`mlflow models serve` as the README writes it; one real episode over HTTP gets the jamo and
    probability that the run's own model gives (its channels, transforms and scaler applied)."""
    (command,) = [c for c, how in CHECKS.items() if how == SERVE]
    port = free_port()
    log = folder / "serve.log"
    env = cli_env() | {"PATH": f"{Path(sys.executable).parent}:{cli_env()['PATH']}"}
    server = spawn(
        as_run(command, folder).replace("--port 5001", f"--port {port}"),
        shell=True,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # noqa: SIM115 (closed with the process)
    )
    frame = pd.read_csv(folder / "a.csv")
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
    )
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                (row,) = json.loads(response.read())["predictions"]
            break
        except OSError:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            assert server.poll() is None and time.time() < deadline, f"the server did not answer: {tail}"
            time.sleep(0.5)
    client = MlflowClient(f"sqlite:///{folder / 'outputs' / 'mlflow.db'}")
    run_id = as_run("RUN_ID", folder)
    rec = Recognizer.load(run_id, client.tracking_uri)
    expected = rec.predict(rec.read(folder / "a.csv"))
    assert row["jamo"] == expected.jamo and row["top3"].startswith(f"{expected.jamo}:")
    assert abs(row["confidence"] - expected.confidence) < 1e-5
    for value, problem in ((float("nan"), "nan is not a finite number"), (float("inf"), "inf is not")):
        rows = frame.astype(object).values.tolist()  # integers stay integers, as the schema wants
        rows[3][list(frame.columns).index("pitch")] = value  # a float column: the schema lets it through
        payload = {"dataframe_split": {"columns": list(frame.columns), "data": rows}}
        refused = refusal(port, json.dumps(payload))  # NaN and Infinity as JSON's extended literals
        assert refused[0] == 400 and f"row 4, column pitch: {problem}" in refused[1], refused
        assert "Traceback" not in refused[1]
    empty = {"dataframe_split": {"columns": list(frame.columns), "data": []}}
    status, text = refusal(port, json.dumps(empty))
    assert status == 400 and "Traceback" not in text, text


def refusal(port: int, body: str) -> tuple[int, str]:
    """(status, body) of a request the server is expected to refuse."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
