"""Send a run kept in its folder to its tracking store, once the store is back.

python -m signglove_exp.upload outputs/runs/2026-11-26_08-00-00_gru_4242 [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from signglove_exp import command


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.upload", description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="the run folder (it holds run.json and metrics.jsonl)")
    ap.add_argument("--tracking-uri", help="default: the store the run was started against")
    args = ap.parse_args(argv)

    from signglove_exp.tracking.upload import upload_run

    return upload_run(args.folder, args.tracking_uri)


if __name__ == "__main__":
    command(main)
