"""Task-level helpers over loaded artifacts: one Artifact subclass per family, which the family names in
`ModelFamily.artifact_class()` (clip.py, dinov2.py, sam2.py; diffusion.py for both SD families)."""
