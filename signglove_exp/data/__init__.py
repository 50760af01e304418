"""The data room: episode files -> corpus -> split -> preprocessing -> arrays.

`corpus` reads and validates episodes, `splits` holds the split strategies (a registry),
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
from signglove_exp.data.preprocess import Prepared, fit_scaler, prepare, to_arrays, write_reports
from signglove_exp.data.splits import PARTS, STRATEGIES, duplicate_copies, split

__all__ = [
    "PARTS",
    "STRATEGIES",
    "BadEpisodeError",
    "Corpus",
    "Episode",
    "Prepared",
    "ensure_unpacked",
    "fit_scaler",
    "load_corpus",
    "prepare",
    "read_episode",
    "split",
    "to_arrays",
    "write_reports",
    "duplicate_copies",
]
