"""Training: the run configuration, the fold loop, models, checkpoints, resume, export.

Backend-neutral Keras; TensorFlow for `tf.data`, `tf.summary` and SavedModel export; JAX only
inside the device and host functions of `runtime` and `hosts` (never at import). The last stage
before the results: may import every other subpackage except `tpuflow.ensemble`.
"""
