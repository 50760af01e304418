"""What a model is, from its checkpoint, ONNX file or MLflow run alone: its model card.

python -m signglove_exp.describe path/to/model.ckpt          # or model.onnx
python -m signglove_exp.describe RUN_ID [--tracking-uri URI]
python -m signglove_exp.describe data/legacy/epoch92-valloss0.04.ckpt    # upstream files too
"""

from __future__ import annotations

import argparse
from pathlib import Path

from signglove_exp import command


def describe(path: str | Path) -> dict:
    """The card as plain facts, with the checkpoint's epoch; an upstream file is told from its weights."""
    from signglove_exp.card import CARD_KEY, load_checkpoint_file, read_card

    if Path(path).suffix == ".onnx":
        import onnx

        from signglove_exp.inference.onnx_export import WEIGHTS_KEY

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        weights = props.get(WEIGHTS_KEY, "float32")  # files from before the key were float32
        return {"source": f"ONNX model, {weights}", **read_card(path).to_dict()}
    ckpt = load_checkpoint_file(path)
    if CARD_KEY in ckpt:
        return {"source": "signglove-exp checkpoint", **read_card(ckpt).to_dict(), "epoch": ckpt.get("epoch")}
    from signglove_exp.upstream.identify import identify

    return {
        "source": "upstream KLP-SignGlove checkpoint (no model card; architecture told from its weights)",
        "model": identify(ckpt.get("state_dict", ckpt)),
        "epoch": ckpt.get("epoch"),
    }


def render(info: dict, metrics: dict | None = None) -> str:
    from signglove_exp.models import build_model, count_parameters

    model = dict(info["model"])
    name = model.pop("name")
    n_params = count_parameters(build_model(name, **model))
    lines = [
        f"source:       {info['source']}",
        f"architecture: {name} ({n_params:,} trainable parameters)",
        "hyper-params: " + ", ".join(f"{k}={v}" for k, v in model.items()),
    ]
    if info.get("epoch") is not None:
        lines.append(f"epoch:        {info['epoch']}")
    if "classes" in info:
        scaler = info["scaler"]
        lines += [
            f"classes:      {len(info['classes'])}: {' '.join(info['classes'])}",
            f"channels:     {', '.join(info['channels'])}",
            f"sequence:     {info['seq_len']} steps, padding {info['padding']['value']} "
            f"({info['padding']['units']} units) at the end",
            "scaler:       "
            + ", ".join(
                f"{c} {m:.3g}+-{s:.3g}"
                for c, m, s in zip(scaler["channels"], scaler["mean"], scaler["scale"], strict=True)
            ),
            f"              fitted on {scaler['n_samples_seen']:,} real steps",
            f"trained on:   data fingerprint {info.get('data_fingerprint') or 'unknown'}",
            "lineage:      "
            + (
                ", ".join(f"{k}={v}" for k, v in info["lineage"].items() if v)
                if info.get("lineage")
                else "scratch"
            ),
            f"version:      signglove-exp {info.get('version')} (card version {info.get('card_version')})",
        ]
        split = info.get("config", {}).get("split")
        if split:
            lines.append("split:        " + ", ".join(f"{k}={v}" for k, v in split.items()))
    else:
        lines.append(
            "card:         none: classes, channels and scaler must come from elsewhere "
            "(python -m signglove_exp.legacy imports it with upstream's)"
        )
    for k, v in sorted((metrics or {}).items()):
        if k.startswith(("test/", "eval/", "best/")):
            lines.append(f"metric:       {k} = {v:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.describe", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint or .onnx file, or an MLflow run id")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    args = ap.parse_args(argv)
    metrics = None
    path = Path(args.model)
    if not path.is_file():
        from signglove_exp.tracking.queries import download_checkpoint, run_metrics

        path = download_checkpoint(args.model, args.tracking_uri)
        metrics = run_metrics(args.model, args.tracking_uri)
    text = render(describe(path), metrics)
    print(text)
    return text


if __name__ == "__main__":
    command(main)
