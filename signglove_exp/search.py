"""Hyper-parameter search with Optuna, over the same Hydra configs as training.

usage: python -m signglove_exp.search search=NAME [search.n_trials=N] [any training override ...]

The search space is a config group (conf/search/<name>.yaml: config key -> range or
choices). The study is kept in `search.storage` (default: SQLite at outputs/optuna.db), so a killed
search continues where it stopped with the same command, and several processes, or machines sharing
one database URL, can work on one study. Every trial is an MLflow child run of the study's parent
run; trials that trail the others after a validation epoch are pruned; the objective is
`optimized_metric` on validation, and only the best trial is tested, once.
"""

from __future__ import annotations

import signal
import sys

from signglove_exp import command


def main(argv: list[str] | None = None) -> dict | None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(overrides):
        print(__doc__)
        return None
    from signglove_exp.training.cli import compose
    from signglove_exp.training.search import run_search

    received: list[int] = []

    def stop(signum, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a cluster's preemption: stopped like Ctrl-C, the study kept
    try:
        return run_search(compose(*overrides), overrides)
    except (KeyboardInterrupt, SystemExit):
        raise SystemExit(128 + (received[0] if received else signal.SIGINT)) from None


if __name__ == "__main__":
    command(main)
