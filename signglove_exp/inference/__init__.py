"""The inference room: `recognizer` (PyTorch or ONNX Runtime), `stream` (live segmentation),
`evaluation` (a model on a set of episodes), `onnx_export`, and `pyfunc_model` (the model in
MLflow's pyfunc format)."""
