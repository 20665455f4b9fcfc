"""How close a device view or transform must come to the host's, in pixel values 0..255."""
import numpy as np

from tpuflow.inputs import ondevice


def atol(name: str, height: int, width: int) -> float:
    """Pixel-moving views: float rounding of the same weights (1e-4). The 45-degree views compute
    each source coordinate once per diagonal (`ondevice._diagonal_tables`) where the host rounds
    it per pixel: a few ulps of a coordinate, times a neighbour difference of up to 255."""
    if "crop" not in name:
        return 1e-4
    return 4 * 255 * float(np.spacing(np.float32(max(height, width))))


def transform_atol(index: int, height: int, width: int) -> float:
    return atol(ondevice.REFERENCE_VIEWS[index], height, width)
