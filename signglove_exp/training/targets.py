"""What a run folder may make a resumed run instantiate: the project's own kinds of objects only.

A run folder is data (anyone who can write to it can edit `config.yaml` and `.hydra/`), so the
`_target_` values `resume=` reads there must name the project, a torch optimiser or scheduler, or a
Lightning callback or trainer; anything else (`builtins.open`, `os.system`) is refused before
anything runs. A new run's config comes from the user's own command line and conf/ and is trusted.
"""

from __future__ import annotations

import re

# targets a resumed run may instantiate: these modules and their children
TRUSTED = ("signglove_exp.", "torch.optim.", "pytorch_lightning.callbacks.", "pytorch_lightning.Trainer")
IN_OVERRIDE = re.compile(r"_target_['\"]?\s*[:=]\s*['\"]?([^'\",}\s]+)")


def trusted(target: str) -> bool:
    return any(target == t or target.startswith(t) for t in TRUSTED)


def untrusted_in_config(node, key: str = "") -> list[str]:
    """`key: target` for every `_target_` in a (container) config that is not trusted."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{key}.{k}" if key else str(k)
            if k == "_target_" and not trusted(str(v)):
                found.append(f"{path}: {v}")
            found += untrusted_in_config(v, path)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += untrusted_in_config(v, f"{key}[{i}]")
    return found


def check_overrides(overrides: list[str], source: str) -> None:
    """Refuse a saved command line that names an untrusted target (or Hydra callbacks, which Hydra
    itself instantiates)."""
    for o in overrides:
        bad = [t for t in IN_OVERRIDE.findall(o) if not trusted(t)]
        if bad or "hydra.callbacks" in o:
            raise ValueError(
                f"{source}: the override {o[:120]} names {bad[0] if bad else 'a Hydra callback'}; a run "
                f"folder is data, and resume instantiates only {', '.join(TRUSTED)}"
            )


def check_config(container: dict, source: str) -> None:
    bad = untrusted_in_config(container)
    if bad:
        raise ValueError(
            f"{source}: {bad[0]} is not one of the project's targets; a run folder is data, and resume "
            f"instantiates only {', '.join(TRUSTED)}"
        )
