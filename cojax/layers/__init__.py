"""Continual layers (one file per family)."""
