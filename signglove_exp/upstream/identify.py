"""An upstream checkpoint's architecture and hyper-parameters, told from its state-dict keys and shapes."""

from __future__ import annotations

import re


def identify(state_dict: dict) -> dict:
    """Architecture name and hyper-parameters from weights alone (architectures.md's signatures)."""
    sd = {k.removeprefix("model."): v for k, v in state_dict.items()}
    keys = set(sd)

    def layers(prefix: str) -> int:
        return 1 + max(int(m.group(1)) for k in keys if (m := re.fullmatch(rf"{prefix}weight_ih_l(\d+)", k)))

    if "RNN.0.weight" in keys and "RNN.1.weight_ih_l0" in keys:
        proj, n_channels = sd["RNN.0.weight"].shape
        return {
            "name": "gru",
            "n_channels": n_channels,
            "n_classes": sd["output_layers.output_layers.3.weight"].shape[0],
            "hidden": sd["RNN.1.weight_hh_l0"].shape[1],
            "layers": layers(r"RNN\.1\."),
            "input_projection": proj,
        }
    if "RNN.weight_ih_l0" in keys:
        n = layers(r"RNN\.")
        common = {
            "n_channels": sd["RNN.weight_ih_l0"].shape[1],
            "hidden": sd["RNN.weight_hh_l0"].shape[1],
            "n_classes": sd["output_layers.output_layers.3.weight"].shape[0],
        }
        return (
            {"name": "gru", **common, "layers": 1}
            if n == 1
            else {"name": "stacked_gru", **common, "layers": n}
        )
    towers = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"tower(\d+)\.0\.weight", k)))
    if towers:
        conv = sd["tower1.0.weight"]
        common = {
            "n_channels": 8,
            "n_classes": sd["output_layers.3.weight"].shape[0],
            "filters": conv.shape[0],
            "kernels": [sd[f"tower{i}.0.weight"].shape[2] for i in towers],
        }
        if "tower1.3.weight" in keys and "gru1.weight_ih_l0" in keys and "gru2.weight_ih_l0" in keys:
            return {"name": "ms3d_stacked_gru", **common, "hidden": sd["gru2.weight_hh_l0"].shape[1]}
        if "gru.weight_ih_l0" in keys and "tower1.3.weight" not in keys:
            return {"name": "ms3d_gru", **common, "hidden": sd["gru.weight_hh_l0"].shape[1]}
    shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:8])
    raise ValueError(f"weights match no known architecture signature; found {len(sd)} tensors: {shown}, ...")
