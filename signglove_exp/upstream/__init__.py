"""Upstream KLP-SignGlove's files: architecture told from weights (`identify`), its pickled scaler
read without running code (`scaler`), its checkpoints converted, evaluated and logged (`convert`)."""
