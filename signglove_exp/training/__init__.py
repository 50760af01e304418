"""The training room: where a run starts (`start`), the LightningModule (`module`), fine-tuning
(`finetune`), exact resume (`resume_state`) and `train(cfg)` with its command (`train`)."""
