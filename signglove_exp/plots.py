"""Figures, drawn with a bundled Hangul font so jamo labels never turn into boxes.

No system font here has Hangul: NanumGothic (SIL Open Font License, fonts/OFL.txt) ships with the
package and is registered as a fallback behind matplotlib's default Latin font.
"""

from __future__ import annotations

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
