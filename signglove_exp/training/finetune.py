"""Which parts of a network train when a run starts from an existing model (`finetune.train`).

A preset names groups of modules each architecture declares in its `PARTS` (`head`, `recurrent`);
a list names module prefixes (`[output_layers.output_layers.3]`). Everything else is frozen.
"""

from __future__ import annotations

from torch import nn

PRESETS = {"all": (), "head": ("head",), "recurrent_head": ("recurrent", "head")}  # () = every parameter


def freeze(net: nn.Module, spec: str | list[str]) -> list[str]:
    """Freeze all but the parts `spec` names; returns the module prefixes that train ([] = all)."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(
                f"finetune.train={spec!r}: not one of {', '.join(PRESETS)} (or a list of module prefixes)"
            )
        prefixes = [p for group in PRESETS[spec] for p in net.PARTS[group]]
    else:
        prefixes = [str(p) for p in spec]
    if not prefixes:
        return []
    names = [n for n, _ in net.named_parameters()]
    unmatched = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
    if unmatched:
        modules = sorted({n.split(".")[0] for n in names})
        raise ValueError(
            f"finetune.train: {', '.join(unmatched)} names no parameter of this network "
            f"(its modules: {', '.join(modules)})"
        )
    for n, p in net.named_parameters():
        p.requires_grad = any(n == q or n.startswith(q + ".") for q in prefixes)
    return prefixes
