"""Installable tpuflow library (src layout: the package lives in lib/)."""
from setuptools import find_packages, setup

setup(
    name="tpuflow",
    version="0.1.0",
    description="TPU-first TensorFlow/Keras pipeline for k-fold image and image-sequence models",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.10",
    install_requires=[
        # 2.20 must keep working: it is the newest tensorflow-tpu release.
        "tensorflow>=2.18,<2.22",
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
        "test": ["pytest", "gcp-storage-emulator", "mitmproxy>=11"],
        # Documented, not installed here (see README):
        "tpu": ["tensorflow-tpu", "libtpu"],
        "gpu": ["tensorflow[and-cuda]>=2.18,<2.22"],
        "efficientnet": ["efficientnet"],
    },
)
