"""Checkpoint writes that a kill cannot turn into a lost run.

Lightning writes a checkpoint to a temporary file under $TMPDIR and moves it onto its name; when
$TMPDIR is another filesystem (a tmpfs), the move is a copy onto `last.ckpt`, and a kill during it
leaves neither the old checkpoint nor the new one. Here the temporary file sits beside its target,
is flushed to disk, then renamed over it: on one filesystem the rename is atomic, so `last.ckpt` is
always a whole checkpoint, the old one or the new one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from pytorch_lightning.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        serialised = io.BytesIO()  # torch's file writer reports a failed write as a RuntimeError
        torch.save(checkpoint, serialised)
        try:
            with open(partial, "wb") as f:
                f.write(serialised.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except OSError as error:  # a full disk or a file-size limit: say which file
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        finally:
            partial.unlink(missing_ok=True)
