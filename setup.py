"""Installable tpuflow library (src layout: the package lives in lib/)."""
from setuptools import find_packages, setup

TF = "tensorflow>=2.18,<2.22"
JAX = "jax>=0.5"
ORBAX = "orbax-checkpoint>=0.11"  # Keras 3.14+ OrbaxCheckpoint era; 0.12.8 tested

setup(
    name="tpuflow",
    version="0.1.0",
    description="TPU-first TensorFlow/Keras pipeline for k-fold image and image-sequence models",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.10",
    # TensorFlow comes from an extra: a TPU VM needs `tensorflow-cpu` next to `jax[tpu]` (the plain
    # wheel would try to open the TPU that JAX owns), the legacy TPUStrategy path `tensorflow-tpu`.
    install_requires=[
        "keras>=3.8",
        "numpy",
        "pandas",
        "absl-py",
        "pillow>=10.2",  # RGB JPEGs without chroma subsampling (stacked/mean records)
        "scipy",
        "scikit-learn>=1.6",  # the CV splitters (GroupKFold, StratifiedGroupKFold)
        "matplotlib",
        "google-cloud-storage",
        "google-crc32c",
        "tensorboard",  # tf.summary's writers (TensorFlow no longer brings it) and the viewer
    ],
    extras_require={
        # Laptop / CPU machine / CI: TensorFlow (2.20 must keep working: the newest tensorflow-tpu)
        # and CPU JAX, so that both Keras backends run. jax >= 0.12 needs Python 3.12; pip picks
        # the newest release this Python supports.
        "cpu": [TF, JAX, ORBAX],
        "test": [TF, JAX, ORBAX, "pytest", "pytest-xdist", "gcp-storage-emulator", "mitmproxy>=11"],
        # Backups under the JAX backend (asynchronous, multi-host): every JAX install below wants it.
        "orbax": [ORBAX],
        # Documented, not installed here (see docs/backends.md, "Installing elsewhere"):
        # TPU VM (Kaggle, Cloud TPU v4/v5e/v6e, TPU7x): Keras on JAX owns the TPU, TF only feeds tf.data.
        "tpu": ["jax[tpu]>=0.5", "tensorflow-cpu>=2.18,<2.22", ORBAX],
        # Legacy TPUStrategy (TPU v2-v5 with a TF/libtpu pairing; tensorflow-tpu stops at 2.20).
        "tpu-tf": ["tensorflow-tpu>=2.18,<=2.20", "libtpu"],
        # Plans for TPUs on a CPU (tools/tpu_plan.py): JAX's TPU compiler (libtpu) next to the
        # installed jax; tpuflow never starts it as a device where the machine shows no TPU.
        "tpu-aot": ["jax[tpu]>=0.5"],
        "gpu": ["tensorflow[and-cuda]>=2.18,<2.22"],  # CUDA GPUs, TensorFlow backend
        "gpu-jax": ["jax[cuda12]>=0.5", "tensorflow-cpu>=2.18,<2.22", ORBAX],  # CUDA GPUs, JAX backend
        "efficientnet": ["efficientnet"],
        # Dataset builds on Apache Beam (create_tfrecords.py --runner=DataflowRunner|...); `gcp`
        # brings the Dataflow client. Checked: 2.77 next to TensorFlow 2.21 on Python 3.11.
        "beam": ["apache-beam[gcp]>=2.77,<3"],
    },
)
