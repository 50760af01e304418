"""The training room: where a run starts (`start`), the LightningModule (`module`), training-batch
augmentation (`augment`), fine-tuning (`finetune`), few-shot calibration to a new signer (`adapt`),
exact resume (`resume_state`), `train(cfg)` (`train`) and the Hydra command (`cli`)."""
