"""Task-level helpers over loaded artifacts, one module per family (named like the family)."""
