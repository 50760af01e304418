"""The data room: episode files -> corpus -> split -> preprocessing -> arrays.

`corpus` reads and validates episodes, `splits` holds the split strategies (a registry) and the
few-shot draw, `transforms` the channel transforms and normalisation scopes (registries),
`preprocess` fits preprocessing on the train part and makes the arrays; `prepare` runs it all.
"""

from signglove_exp.data.corpus import (
    BadEpisodeError,
    Corpus,
    Episode,
    ensure_unpacked,
    load_corpus,
    read_episode,
)
from signglove_exp.data.preprocess import (
    NeedsSignerStatistics,
    Prepared,
    fit_scaler,
    model_inputs,
    prepare,
    signer_statistics_needed,
    to_arrays,
    vote,
    windows,
    write_reports,
)
from signglove_exp.data.splits import PARTS, STRATEGIES, draw_shots, duplicate_copies, halves, split
from signglove_exp.data.transforms import SCOPES, TRANSFORMS, apply_transforms

__all__ = [
    "SCOPES",
    "TRANSFORMS",
    "apply_transforms",
    "PARTS",
    "STRATEGIES",
    "BadEpisodeError",
    "Corpus",
    "Episode",
    "NeedsSignerStatistics",
    "Prepared",
    "ensure_unpacked",
    "fit_scaler",
    "model_inputs",
    "load_corpus",
    "prepare",
    "read_episode",
    "signer_statistics_needed",
    "split",
    "to_arrays",
    "vote",
    "windows",
    "write_reports",
    "duplicate_copies",
    "draw_shots",
    "halves",
]
