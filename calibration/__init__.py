"""Calibration and validation data: image folders, the bundled sample photos, prompts, feed builders."""
