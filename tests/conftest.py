"""Shared pytest fixtures."""
from gcs_fixture import gcs_emulator, tf_gcs_proxy_env  # noqa: F401  (Cloud Storage emulator)
