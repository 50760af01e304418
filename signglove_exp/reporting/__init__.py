"""The reporting room: comparison reports over runs (`compare`), their few-shot calibration section
(`calibration`) and figures with Hangul labels (`figures`)."""
