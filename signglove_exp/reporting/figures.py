"""Figures, drawn with a bundled Hangul font so jamo labels never turn into boxes.

No system font here has Hangul: NanumGothic (SIL Open Font License, fonts/OFL.txt) ships with the
package and is registered as a fallback behind matplotlib's default Latin font.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import font_manager  # noqa: E402

FONT_FILE = Path(__file__).parent / "fonts" / "NanumGothic.ttf"


def use_hangul_font() -> str:
    """Register the bundled font and put it behind DejaVu Sans; returns its family name."""
    font_manager.fontManager.addfont(str(FONT_FILE))
    family = font_manager.FontProperties(fname=str(FONT_FILE)).get_name()
    plt.rcParams["font.family"] = ["DejaVu Sans", family]
    return family


def write_confusion(cm: np.ndarray, classes: list[str], out_dir: Path, title: str) -> list[Path]:
    """The confusion matrix as CSV counts (rows true, columns predicted) and as a figure."""
    csv_path = out_dir / "confusion_matrix.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["true \\ predicted", *classes])
        w.writerows([c, *row] for c, row in zip(classes, cm.tolist(), strict=True))
    return [csv_path, confusion_matrix_figure(cm, classes, out_dir / "confusion_matrix.png", title)]


def confusion_matrix_figure(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    use_hangul_font()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.42 * n + 3, 0.36 * n + 2.5))
    counts = np.where(cm > 0, cm.astype(str), "")  # zeros left blank so the errors stand out
    sns.heatmap(
        cm,
        annot=counts,
        fmt="",
        cmap="Blues",
        cbar=False,
        xticklabels=classes,
        yticklabels=classes,
        annot_kws={"size": 8},
        ax=ax,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    ax.tick_params(axis="both", labelsize=13, rotation=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion_grid(matrices: dict[str, np.ndarray], classes: list[str], path: Path) -> Path:
    """One row-normalised confusion matrix per model, side by side, so error patterns compare."""
    use_hangul_font()
    n = len(matrices)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.5 * cols, 7.5 * rows), squeeze=False)
    for ax, (model, cm) in zip(axes.flat, matrices.items(), strict=False):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        sns.heatmap(
            norm,
            vmin=0,
            vmax=1,
            cmap="Blues",
            cbar=False,
            xticklabels=classes,
            yticklabels=classes,
            square=True,
            ax=ax,
        )
        ax.set_title(f"{model}: accuracy {np.trace(cm) / max(cm.sum(), 1):.4f} ({int(cm.sum())} episodes)")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(axis="both", labelsize=11, rotation=0)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_class_heatmap(
    values: dict[str, np.ndarray], classes: list[str], path: Path, label: str = "F1"
) -> Path:
    """Models x classes, so the jamo a model struggles with stand out."""
    use_hangul_font()
    table = np.vstack(list(values.values()))
    fig, ax = plt.subplots(figsize=(0.5 * len(classes) + 3, 0.6 * len(values) + 1.8))
    sns.heatmap(
        table,
        vmin=0,
        vmax=1,
        cmap="RdYlGn",
        annot=True,
        fmt=".2f",
        annot_kws={"size": 7},
        xticklabels=classes,
        yticklabels=list(values),
        cbar_kws={"label": label},
        ax=ax,
    )
    ax.set_title(f"per-class {label} (mean over runs)")
    ax.tick_params(axis="x", labelsize=12, rotation=0)
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(bands: dict[tuple[str, str], dict[int, dict]], path: Path) -> Path:
    """Accuracy against shots per class: a panel per method, a line per model (and its settings) with
    its range over held-out signers and draws as a band."""
    groups = list(dict.fromkeys(g for g, _ in bands))
    methods = list(dict.fromkeys(m for _, m in bands))
    colours = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods) + 1, 4.5), sharey=True, squeeze=False)
    for (group, method), stats in bands.items():
        ax = axes[0, methods.index(method)]
        ks = sorted(stats)
        mean, lo, hi = (np.array([stats[k][b] for k in ks]) for b in ("mean", "lo", "hi"))
        colour = colours(groups.index(group) % colours.N)
        ax.plot(ks, mean, marker="o", color=colour, label=group)
        ax.fill_between(ks, lo, hi, color=colour, alpha=0.12)
    for ax, method in zip(axes[0], methods, strict=True):
        ax.set_title(method)
        ax.set_xlabel("labelled episodes per class (k)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy on the new signer")
    axes[0, -1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_plots(study, out_dir: Path) -> list[Path]:
    """An Optuna study's optimisation history and, with two or more complete trials, its parameter
    importances, as PNG files."""
    import warnings

    from optuna.visualization import matplotlib as plots

    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        drawings = [("optimization_history.png", plots.plot_optimization_history)]
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if len(complete) > 1:
            drawings.append(("param_importances.png", plots.plot_param_importances))
        for name, draw in drawings:
            ax = draw(study)
            ax.figure.set_size_inches(8, 5)
            ax.figure.tight_layout()
            ax.figure.savefig(out_dir / name, dpi=110)
            plt.close(ax.figure)
            paths.append(out_dir / name)
    return paths
