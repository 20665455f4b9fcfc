"""Shared pytest fixtures."""
from gcs_fixture import gcs_emulator  # noqa: F401  (session-scoped Cloud Storage emulator)
