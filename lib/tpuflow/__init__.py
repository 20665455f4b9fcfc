"""tpuflow: k-fold, TPU-first Keras 3 pipeline (JAX or TensorFlow backend) for image and image-sequence models."""
from tpuflow import backend as _backend

__version__ = "0.1.0"

_backend.apply()  # before anything imports Keras: `--backend` / KERAS_BACKEND pick its backend
