"""tpuflow: k-fold, TPU-first Keras 3 pipeline (JAX or TensorFlow backend) for image and image-sequence models."""
import os

# TensorFlow's C++ start-up logs (oneDNN, CUDA probing on a machine without a GPU, CPU features)
# tell a user nothing to act on; silenced here, before any tpuflow module can import TensorFlow.
# Set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tpuflow import backend as _backend  # noqa: E402

__version__ = "0.1.0"

_backend.choose_before_keras()  # `--backend` / KERAS_BACKEND pick Keras' backend when it is first imported
