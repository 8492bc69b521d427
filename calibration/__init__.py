"""Calibration and validation data: image folders, the bundled sample photos, prompts, and one
CalibrationRecipe per family (recipe.py: the protocol; feed builders and task-level checks)."""
