"""Hydra-configured experiments for glove-based Korean Sign Language fingerspelling recognition."""
