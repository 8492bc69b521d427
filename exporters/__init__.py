"""Exporters: one module per model family, each defining FAMILY (torch is imported lazily)."""
