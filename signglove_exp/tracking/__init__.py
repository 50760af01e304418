"""The tracking room: `store` (where runs live), `logger` (a run's curves, outliving its server),
`records` (a run folder's record, stale runs), `runs` (what else goes into runs), `packaging` (the
pyfunc model), `queries` (reading runs back), `sweep` (a multirun's parent run, the Hydra callback),
`upload` (a run kept locally, sent later)."""
