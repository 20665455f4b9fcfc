"""Data preparation: raw competition data -> CV split -> TFRecords and the frame store.

No TensorFlow, Keras or JAX: the builder's worker processes, the Beam workers and the
`data_prep/` scripts start in a fraction of a second and hold no accelerator (the one exception:
`store` parses a record with TensorFlow's protobuf classes inside the function assembly calls).
May import `tpuflow.storage` and the top-level `tpuflow.cli`, nothing from the later stages.
"""
