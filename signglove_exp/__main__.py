"""`python -m signglove_exp [overrides]`: one experiment, or a multirun with -m or sweep=..."""

from signglove_exp.train import cli

cli()
