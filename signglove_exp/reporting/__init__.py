"""The reporting room: comparison reports over runs (`compare`) and figures with Hangul labels (`figures`)."""
