"""The package version, in one place: pyproject reads it, logs and checkpoints record it."""

__version__ = "0.2.0"
