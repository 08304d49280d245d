"""Quantization experiments: QAT and PTQ on the main job's setup."""
