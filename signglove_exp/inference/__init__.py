"""The inference room: `recognizer` (PyTorch or ONNX Runtime), `stream` (live segmentation),
`onnx_export`, and `pyfunc_model` (the model in MLflow's pyfunc format)."""
