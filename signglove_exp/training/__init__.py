"""The training room: where a run starts (`start`), the LightningModule (`module`), fine-tuning
(`finetune`), exact resume (`resume_state`), `train(cfg)` (`train`) and the Hydra command (`cli`)."""
