"""`python -m signglove_exp [overrides]`: one experiment, a multirun (-m or sweep=...), or resume=..."""

from signglove_exp.training.cli import cli

cli()
