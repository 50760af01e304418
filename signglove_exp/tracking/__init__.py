"""The tracking room: `store` (where runs live), `runs` (writing them), `queries` (reading them back),
`sweep` (a multirun's parent run, the Hydra callback), `upload` (a run kept locally, sent later)."""
