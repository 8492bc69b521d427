"""Targets: one module per deployment target, each defining TARGET."""
