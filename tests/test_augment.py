"""TTA transforms and training augmentation: exact pixels, Pillow reference, tf.data behaviour, the
training draws and their device transforms."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import view_tolerance
from tpuflow.inputs import augment, ondevice
from tpuflow.inputs.augment import N_TRANSFORMS, apply_tta, rotate

# Exact transforms 0..5 as NumPy operations on the (H, W) axes of an (..., H, W, C) array.
EXACT = {
    0: lambda a: a,
    1: lambda a: np.flip(a, axis=-2),
    2: lambda a: np.flip(a, axis=-3),
    3: lambda a: np.rot90(a, k=1, axes=(-3, -2)),
    4: lambda a: np.rot90(a, k=2, axes=(-3, -2)),
    5: lambda a: np.rot90(a, k=3, axes=(-3, -2)),
}
ANGLES = {6: 45.0, 7: 135.0, 8: 225.0, 9: 315.0}


def distinct_image(channels: int, frames: int | None = None, size: int = 9) -> np.ndarray:
    """An asymmetric image whose every pixel value is distinct (so each transform differs)."""
    shape = (size, size, channels) if frames is None else (frames, size, size, channels)
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def smooth_image(channels: int, size: int = 64) -> np.ndarray:
    """A smooth, asymmetric image (off-centre Gaussian blob plus a gradient) per channel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    planes = [
        np.exp(-((xx - 0.35 - 0.1 * c) ** 2 + (yy - 0.6) ** 2) / 0.05) + 0.5 * xx + 0.25 * (c + 1) * yy
        for c in range(channels)
    ]
    return np.stack(planes, axis=-1).astype(np.float32)


def in_dataset(fn, image: np.ndarray) -> tuple[np.ndarray, tf.TensorSpec]:
    """Runs ``fn`` inside a tf.data map (graph mode); returns the element and its spec."""
    ds = tf.data.Dataset.from_tensors(image).map(fn)
    return next(iter(ds)).numpy(), ds.element_spec


def pillow_reference(image: np.ndarray, degrees: float) -> np.ndarray:
    """Independent reference of transforms 6..9: Pillow bilinear rotation, crop 0.7, resize back."""
    height, width = image.shape[:2]
    top = int((height - height * augment.CROP_FRACTION) / 2)
    left = int((width - width * augment.CROP_FRACTION) / 2)
    planes = []
    for c in range(image.shape[-1]):
        plane = Image.fromarray(image[..., c]).rotate(degrees, resample=Image.BILINEAR)
        plane = plane.crop((left, top, width - left, height - top))
        planes.append(np.asarray(plane.resize((width, height), Image.BILINEAR)))
    return np.stack(planes, axis=-1)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("frames", [None, 2])
@pytest.mark.parametrize("tta_index", sorted(EXACT))
def test_exact_transforms_eager_and_in_dataset(tta_index, frames, channels):
    image = distinct_image(channels, frames)
    expected = EXACT[tta_index](image)
    eager = apply_tta(tf.constant(image), tta_index)
    np.testing.assert_array_equal(eager.numpy(), expected)
    graph, spec = in_dataset(lambda x: apply_tta(x, tta_index), image)
    np.testing.assert_array_equal(graph, expected)
    assert spec.shape == image.shape and spec.shape.is_fully_defined()


def test_rotation_direction_is_counter_clockwise_as_displayed():
    # Top-right corner moves to the top-left under a counter-clockwise quarter turn.
    image = distinct_image(1, size=3)
    out = apply_tta(image, 3).numpy()
    assert out[0, 0, 0] == image[0, 2, 0]


@pytest.mark.parametrize("channels", [1, 3])
def test_general_rotation_at_90_matches_rot90(channels):
    image = smooth_image(channels, size=16)
    for k, degrees in [(1, 90.0), (2, 180.0), (3, 270.0)]:
        general = rotate(image, degrees).numpy()
        np.testing.assert_allclose(general[1:-1, 1:-1], np.rot90(image, k)[1:-1, 1:-1], atol=1e-4)
        np.testing.assert_allclose(general[1:-1, 1:-1], apply_tta(image, 2 + k).numpy()[1:-1, 1:-1], atol=1e-4)


@pytest.mark.parametrize("degrees", [45.0, 135.0, 225.0, 315.0, 30.0])
def test_rotate_matches_pillow(degrees):
    image = smooth_image(2)
    expected = np.stack(
        [np.asarray(Image.fromarray(image[..., c]).rotate(degrees, resample=Image.BILINEAR)) for c in range(2)],
        axis=-1,
    )
    # Compare inside the inscribed circle, away from the filled corners.
    yy, xx = np.mgrid[0:64, 0:64] - 31.5
    inside = np.hypot(yy, xx) < 28
    np.testing.assert_allclose(rotate(image, degrees).numpy()[inside], expected[inside], atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("tta_index", sorted(ANGLES))
def test_diagonal_transforms_match_pillow_eager_and_in_dataset(tta_index, channels):
    image = smooth_image(channels)
    expected = pillow_reference(image, ANGLES[tta_index])
    eager = apply_tta(image, tta_index).numpy()
    graph, spec = in_dataset(lambda x: apply_tta(x, tta_index), image)
    assert eager.shape == image.shape and spec.shape == image.shape
    np.testing.assert_allclose(graph, eager, atol=1e-6)
    margin = 3
    np.testing.assert_allclose(
        eager[margin:-margin, margin:-margin], expected[margin:-margin, margin:-margin], atol=1e-4
    )
    # The transform really changed the image (not a silent identity).
    assert np.abs(eager - image).max() > 0.1


@pytest.mark.parametrize("tta_index", range(N_TRANSFORMS))
def test_sequence_frames_transformed_identically(tta_index):
    frame = smooth_image(3, size=16)
    sequence = np.stack([frame, frame[..., ::-1]])  # two frames, different channel content
    out, spec = in_dataset(lambda x: apply_tta(x, tta_index), sequence)
    assert spec.shape == sequence.shape and spec.shape.is_fully_defined()
    for f in range(2):
        np.testing.assert_allclose(out[f], apply_tta(sequence[f], tta_index).numpy(), atol=1e-6)


@pytest.mark.parametrize("tta_index", range(N_TRANSFORMS))
def test_dtype_preserved(tta_index):
    image = (smooth_image(3, size=16) * 100).astype(np.uint8)
    out = apply_tta(tf.constant(image), tta_index)
    assert out.dtype == tf.uint8 and out.shape == image.shape


def test_non_square_images():
    image = distinct_image(1, size=9)[:, :6]
    for tta_index in (1, 2, 4, 6, 7, 8, 9):
        assert apply_tta(image, tta_index).shape == image.shape
    for tta_index in (3, 5):
        with pytest.raises(ValueError, match=r"square"):
            apply_tta(image, tta_index)


@pytest.mark.parametrize("bad", [-1, 10, 1.0, "3", True])
def test_bad_tta_index_is_named(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        apply_tta(distinct_image(1), bad)


def test_bad_rank_is_named():
    with pytest.raises(ValueError, match=r"\(9, 9\)"):
        apply_tta(np.zeros((9, 9), np.float32), 1)


def _seeded_draws(prob: float, n: int) -> np.ndarray:
    ds = tf.data.Dataset.range(n).map(lambda i: augment.draw(prob, seed=tf.stack([i, 7])))
    return np.stack(list(ds.as_numpy_iterator()))


def test_draws_prob_zero_one_half_and_reproducible_seed():
    assert not _seeded_draws(0.0, 50).any()
    ones = _seeded_draws(1.0, 300)
    assert set(ones) == set(range(1, N_TRANSFORMS))  # each of the nine, never the original
    half = _seeded_draws(0.5, 300)
    assert 0.35 < np.mean(half == 0) < 0.65
    np.testing.assert_array_equal(half, _seeded_draws(0.5, 300))
    batch = augment.draw(1.0, [64]).numpy()  # unseeded, per example of a batch
    assert batch.shape == (64,) and batch.min() >= 1 and len(set(batch)) > 3


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_draw_bad_prob_names_the_flag(prob):
    with pytest.raises(ValueError, match=f"--aug_prob={prob}"):
        augment.draw(prob)
    from tpuflow.training import experiment  # noqa: PLC0415
    with pytest.raises(ValueError, match=f"--aug_prob={prob}"):  # when the run is configured, before any work
        experiment.make_config(aug_prob=prob)


def test_device_augment_equals_the_host_transform_of_each_example():
    """Each example of a batch gets its own transform, every frame alike: within float rounding of
    `apply_tta` on that example, for images and sequences, 366 px and odd sizes."""
    rng = np.random.default_rng(0)
    for shape in [(10, 24, 24, 3), (10, 3, 17, 17, 1), (10, 366, 366, 1)]:
        x = rng.uniform(0, 255, shape).astype(np.float32)
        t = rng.permutation(N_TRANSFORMS).astype(np.int32)
        got = np.asarray(ondevice.device_augment(tf.constant(x), tf.constant(t)))
        want = np.stack([apply_tta(tf.constant(e), int(i)).numpy() for e, i in zip(x, t)])
        assert got.shape == want.shape
        for example, index in enumerate(t):
            np.testing.assert_allclose(got[example], want[example], rtol=0, err_msg=f"{shape} transform {index}",
                                       atol=view_tolerance.transform_atol(index, *shape[-3:-1]))
    with pytest.raises(ValueError, match="square"):
        ondevice.device_augment(tf.zeros([1, 8, 9, 1]), tf.zeros([1], tf.int32))


@pytest.mark.parametrize("tta_index", range(N_TRANSFORMS))
def test_unknown_spatial_shape(tta_index):
    """Images whose H and W are only known at run time (e.g. just decoded) are handled too."""
    image = smooth_image(3, size=16)
    fn = tf.function(lambda x: apply_tta(x, tta_index), input_signature=[tf.TensorSpec([None, None, 3])])
    np.testing.assert_allclose(fn(image).numpy(), apply_tta(image, tta_index).numpy(), atol=1e-6)
