"""Speed measurements against a baseline measured in the same run: upstream's recipe
(`upstream_recipe`), the per-epoch clock both sides wear (`epoch_timer`); the driver is
`python -m signglove_exp.bench_train`."""
