"""tpuflow: k-fold, TPU-first TensorFlow/Keras pipeline for image and image-sequence models."""

__version__ = "0.1.0"
