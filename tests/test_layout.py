"""The house: every config combination composes and builds, imports flow one way, commands start light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from signglove_exp import CONF_DIR, PACKAGE_DIR
from signglove_exp.data import STRATEGIES
from signglove_exp.models import build_model
from tests.conftest import compose_config

PACKAGE = PACKAGE_DIR
CONF = CONF_DIR


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("model", options("model"))
def test_every_model_with_every_data_preset_composes_and_builds(model, data, tmp_path):
    cfg = compose_config(f"model={model}", f"data={data}", f"paths.output_dir={tmp_path}")
    n_channels, n_classes = len(cfg.data.channels), len(cfg.data.classes)
    net = build_model(**OmegaConf.to_container(cfg.model), n_channels=n_channels, n_classes=n_classes)
    logits = net(torch.zeros(2, cfg.data.seq_len, n_channels), torch.tensor([cfg.data.seq_len, 5]))
    assert logits.shape == (2, n_classes)
    for callback in cfg.callbacks.values():
        instantiate(callback)
    instantiate(cfg.optimizer)(net.parameters())


def test_the_bf16_trainer_preset_runs_the_convolutions_in_bfloat16(tmp_path):
    cfg = compose_config("trainer=cpu_bf16", "model=ms3d_gru", f"paths.output_dir={tmp_path}")
    trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    net = build_model(**OmegaConf.to_container(cfg.model))
    seen = []
    net.tower1[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with trainer.precision_plugin.forward_context():
        logits = net(torch.zeros(2, 87, 8), torch.tensor([87, 5]))
    assert seen == [torch.bfloat16] and net.tower1[0].weight.dtype == torch.float32
    assert logits.shape == (2, 24) and cfg.trainer.max_epochs == 100  # the rest is trainer=cpu


@pytest.mark.parametrize("split", options("split"))
def test_every_split_preset_composes_to_a_registered_strategy(split):
    """Split presets interpolate nothing of the model or data groups, so one composition each."""
    assert compose_config(f"split={split}").split.strategy in STRATEGIES


def leaves(node, prefix: str = "") -> dict:
    """Dotted key -> value of every leaf of a nested dict (lists are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {
        k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}.{key}".lstrip(".")).items()
    }


@pytest.mark.parametrize("group,preset", [(g, p) for g in ("sweep", "search") for p in options(g)])
def test_every_sweep_and_search_preset_composes_and_its_values_win(group, preset):
    cfg = compose_config(f"{group}={preset}")
    assert cfg.optimized_metric.startswith("val/")
    own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{preset}.yaml"))
    composed = leaves(OmegaConf.to_container(cfg))
    for key, value in leaves({k: v for k, v in own.items() if k not in ("defaults", "hydra")}).items():
        assert composed[key] == value, f"{group}={preset}: {key} is overridden"


def module_imports() -> dict[str, set[str]]:
    """Module -> the signglove_exp modules it imports at module level (not inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = found
    return graph


def test_no_import_cycle_and_the_walls_hold():
    graph = module_imports()
    ours = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}
    state: dict[str, str] = {}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for n in sorted(ours[module]):
            if state.get(n) == "open":
                return [*path, n]
            if n not in state and (found := cycle_from(n, [*path, n])):
                return found
        state[module] = "done"
        return None

    for module in sorted(ours):
        assert module in state or not (cycle := cycle_from(module, [module])), f"import cycle: {cycle}"

    def imported(prefix: str) -> set[str]:
        return {i for m, imports in graph.items() if m.startswith(prefix) for i in imports}

    assert not {
        i for i in graph["signglove_exp.models"] if i.startswith(("pytorch_lightning", "hydra", "mlflow"))
    }
    assert not {
        i for i in imported("signglove_exp.data") if i.startswith(("torch", "mlflow", "signglove_exp.models"))
    }
    assert not {
        i for i in imported("signglove_exp.reporting") if i.startswith(("mlflow", "signglove_exp.tracking"))
    }
    mlflow_users = {m for m, imports in graph.items() if any(i.startswith("mlflow") for i in imports)}
    assert mlflow_users <= {m for m in graph if m.startswith("signglove_exp.tracking")} | {
        "signglove_exp.inference.pyfunc_model"
    }


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    assert not names & set(sys.stdlib_module_names)


COMMANDS = ["signglove_exp", *(f"signglove_exp.{m}" for m in ("recognize", "evaluate", "report", "export"))]
COMMANDS += [
    f"signglove_exp.{m}" for m in ("describe", "legacy", "bench", "upload", "calibrate", "search", "serve")
]


def test_help_answers_without_loading_torch_lightning_or_mlflow():
    """Every command's --help in one fresh interpreter: each must answer, and after each, none of
    the heavy libraries may be loaded (so the first that loads one is named)."""
    probe = (
        "import contextlib, io, runpy, sys\n"
        "heavy = ('torch', 'pytorch_lightning', 'mlflow', 'sklearn', 'matplotlib')\n"
        f"for command in {COMMANDS!r}:\n"
        "    sys.argv = [command, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_module(command, run_name='__main__')\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    text = out.getvalue()\n"
        "    answered = 'usage' in text.lower() or 'Powered by Hydra' in text\n"
        "    print(command, answered, sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=Path.cwd()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"{c} True []" for c in COMMANDS]


def third_party_imports() -> list[str]:
    """Every library module the package imports at module level."""
    ours = module_imports()
    return sorted({i for imports in ours.values() for i in imports if not i.startswith("signglove_exp")})


def package_modules() -> list[str]:
    return sorted(m for m in module_imports() if not m.endswith("__main__"))


def test_importing_the_package_changes_no_global_state_and_needs_no_fcntl():
    """In a fresh interpreter without fcntl (as on Windows), whose libraries were imported first
    (their own import-time changes are theirs): every module of the package imports, and logging
    (levels, filters, handlers), warning filters and the environment are the same before and after."""
    probe = f"""
import importlib, logging, os, sys, warnings
sys.modules["fcntl"] = None  # import fcntl now raises ImportError
for name in {third_party_imports()!r}:
    try:
        importlib.import_module(name)
    except ImportError:  # `from a import b` where b is a name, not a module
        pass

def state():
    loggers = {{"": logging.getLogger()}}
    known = logging.Logger.manager.loggerDict.items()
    loggers.update({{k: v for k, v in known if isinstance(v, logging.Logger)}})
    return (
        {{k: (v.level, list(v.filters), list(v.handlers), v.propagate, v.disabled)
          for k, v in loggers.items()}},
        list(warnings.filters),
        dict(os.environ),
    )

loggers, filters, environ = state()
for name in {package_modules()!r}:
    importlib.import_module(name)
after_loggers, after_filters, after_environ = state()
changed = [k for k in loggers if loggers[k] != after_loggers[k]]
changed += [k for k in after_loggers.keys() - loggers.keys() if after_loggers[k][:3] != (0, [], [])]
print("loggers", changed)
print("warnings", [f for f in after_filters if f not in filters])
keys = environ.keys() | after_environ.keys()
print("environ", sorted(k for k in keys if environ.get(k) != after_environ.get(k)))
print("fcntl", sys.modules["fcntl"])
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["loggers []", "warnings []", "environ []", "fcntl None"]
