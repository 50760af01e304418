"""The package stands on its own: a built wheel, installed into a fresh virtual environment, trains
from any folder with its own configs and bundled episodes, writing only under that folder."""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

from signglove_exp import CONF_DIR, PACKAGE_DIR


def run(*args, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_a_wheel_installed_in_a_fresh_venv_trains_from_another_folder(tmp_path, cache_dir):
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", PACKAGE_DIR.parent]
    run(sys.executable, "-m", "pip", *build, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("signglove_exp-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # every config of the checkout's conf/, inside the package
        shipped = {n.removeprefix("signglove_exp/conf/") for n in archive.namelist() if "/conf/" in n}
    assert shipped == {p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml")}
    assert PACKAGE_DIR.parent / "conf" == CONF_DIR  # the checkout's top-level conf/
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    # The heavy dependencies come from this environment's site-packages, as a plain path: its own
    # .pth files (this checkout's editable install among them) are not processed there.
    (target,) = (venv / "lib").glob("python3*/site-packages")
    (target / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n", encoding="utf-8")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = venv / "bin" / "python"
    probe = "import signglove_exp as s; print(s.__file__); print(s.CONF_DIR)"
    where, conf = run(python, "-c", probe, cwd=elsewhere).stdout.split()
    assert where.startswith(str(target)), where  # the installed wheel, not the checkout
    assert conf == str(target / "signglove_exp" / "conf")  # and its own configs
    assert "usage" in run(venv / "bin" / "signglove-exp", "--help", cwd=elsewhere).stdout.lower()
    quick = [
        "trainer=debug",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"data.cache_dir={cache_dir}",
    ]
    trained = run(python, "-m", "signglove_exp", *quick, cwd=elsewhere)
    assert "test acc" in trained.stdout and f"Run folder: {elsewhere / 'outputs' / 'runs'}" in trained.stdout
    assert sorted(p.name for p in elsewhere.iterdir()) == ["outputs"]  # nothing else written here
    assert (elsewhere / "outputs" / "data" / "signglove").is_dir()  # the bundled episodes, unpacked here
    assert not list(target.rglob("mlflow.db")) and not (target / "signglove_exp" / "outputs").exists()
