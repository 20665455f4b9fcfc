"""tpuflow: k-fold, TPU-first TensorFlow/Keras pipeline for image and image-sequence models."""
import os

# TensorFlow's C++ start-up logs (oneDNN, CUDA probing on a machine without a GPU, CPU features)
# tell a user nothing to act on; silenced here, before any tpuflow module can import TensorFlow.
# Set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
