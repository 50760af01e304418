"""The training room: where a run starts (`start`), the LightningModule (`module`), training-batch
augmentation (`augment`), fine-tuning (`finetune`), few-shot calibration to a new signer (`adapt`)
and the personal model it makes (`personal`), an Optuna study (`search`), exact resume
(`resume_state`), `train(cfg) -> TrainResult` (`train`) and the Hydra command (`cli`)."""
