"""The input pipeline: TFRecords, or examples assembled from a frame store (one `source` over both) ->
parsed, augmented `tf.data` batches.

TensorFlow (`tf.data`) and Keras preprocessing; no JAX. May import `tpuflow.prep` (dataset kinds
and the TF-free record format), `tpuflow.storage` and `tpuflow.cli`; what only training knows
(this host's share, the devices' batch) it is given.
"""
