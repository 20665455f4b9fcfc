"""Mixup and cutmix on real batches read from real records: every mixed input (drawn on the host,
blended by the device's function) and target is the convex combination of two examples of the
same batch, with one weight for input and target."""
import numpy as np
import pytest
import tensorflow as tf

from tpuflow.inputs import mixup, ondevice, pipeline, records
from tpuflow.training import experiment

BATCH = 8


def _batches(tfrec_dir, cfg, parse, mix=None, n=3, block=None):
    files = records.record_files(tfrec_dir, [0, 1, 2, 3])
    ds = pipeline.train_dataset(files, parse, BATCH, shuffle_buffer=64, seed=5)
    if mix:  # drawn on the host, blended by the device's function
        ds = mixup.mix_dataset(ds, seed=9, block=block, **mix).map(
            lambda x, y: (ondevice.device_blend(x["image"], x, block), y))
    return [(x.numpy().astype(np.float64), y.numpy().astype(np.float64)) for x, y in ds.take(n)]


def _partners(x, y, xm, ym, mode):
    """For each mixed example i: (lam, j) with xm[i] = combination of x[i] and x[j] (checked)."""
    found = []
    for i in range(len(x)):
        best = None
        for j in range(len(x)):
            if mode == "mixup":
                d = (x[i] - x[j]).ravel()
                lam = 1.0 if not d.any() else float(np.dot((xm[i] - x[j]).ravel(), d) / np.dot(d, d))
                expect = lam * x[i] + (1 - lam) * x[j]
            else:  # cutmix: one box (every frame) from x[j], the rest from x[i]; weight = kept area
                changed = ~np.isclose(xm[i], x[i]).all(axis=-1)
                changed = changed.reshape(-1, *changed.shape[-2:]).any(axis=0)  # (H, W)
                box = np.zeros_like(changed)
                if changed.any():
                    rows, cols = np.where(changed.any(axis=1))[0], np.where(changed.any(axis=0))[0]
                    box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
                lam = 1.0 - float(box.mean())
                expect = np.where(box[..., None], x[j], x[i])
            if np.allclose(xm[i], expect, atol=1e-3) and 0 <= lam <= 1:
                err = abs(ym[i] - (lam * y[i] + (1 - lam) * y[j])).max()
                if best is None or err < best[0]:
                    best = (err, lam, j)
        assert best is not None, f"example {i} is not a {mode} of two examples of its batch"
        assert best[0] < 1e-3, f"example {i}: target is not mixed with the input's weight ({best})"
        found.append(best[1:])
    return found


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixed_batches_are_convex_combinations(task, mode, cv_dir, single_dir):
    n_classes = len(np.load(f"{cv_dir}/unique_labels_sorted.npy"))
    cfg = experiment.make_config(dim=16, task=task, n_classes=n_classes if task == "classification" else 0)
    parse = lambda s: experiment.parse_image_example(s, cfg, channels=1)  # noqa: E731
    plain = _batches(single_dir, cfg, parse)
    mixed = _batches(single_dir, cfg, parse, dict(alpha=0.4, prob=1.0, mode=mode))
    n_mixed = 0
    for (x, y), (xm, ym) in zip(plain, mixed):
        assert xm.shape == x.shape and ym.shape == y.shape
        n_mixed += sum(lam < 0.999 for lam, _ in _partners(x, y, xm, ym, mode))
    assert n_mixed >= len(plain) * BATCH // 2  # prob=1: most examples really got a partner
    if task == "classification":
        np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-5)  # still a distribution


def test_partners_stay_on_their_device(cv_dir, single_dir):
    """With 2 devices of 4 examples each, every partner is one of the same device's examples."""
    cfg = experiment.make_config(dim=16)
    parse = lambda s: experiment.parse_image_example(s, cfg, channels=1)  # noqa: E731
    mixed = _batches(single_dir, cfg, parse, dict(alpha=0.4, prob=1.0, mode="mixup"), block=4)
    pairs = [(i, j) for (x, y), (xm, ym) in zip(_batches(single_dir, cfg, parse), mixed)
             for i, (lam, j) in enumerate(_partners(x, y, xm, ym, "mixup")) if lam < 0.999]
    assert len(pairs) >= BATCH and all(i // 4 == j // 4 for i, j in pairs), pairs
    with pytest.raises(ValueError, match="a batch of 8 does not split into blocks of 3"):
        mixup.draw_mix(tf.TensorSpec([8, 4, 4, 1]), tf.zeros([8]), tf.constant([1, 2]), alpha=1.0, prob=1.0, block=3)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_sequences_get_one_mix_for_all_frames(mode, cv_dir, history_dirs):
    cfg = experiment.make_config(dim=16)
    cfg = cfg.replace(n_frames=6)
    parse = lambda s: experiment.parse_sequence_example(s, cfg)  # noqa: E731
    (x, y), = _batches(history_dirs["sequence"], cfg, parse, n=1)
    (xm, ym), = _batches(history_dirs["sequence"], cfg, parse, dict(alpha=1.0, prob=1.0, mode=mode), n=1)
    assert x.shape[1:] == (6, 16, 16, 1)
    # One weight for the whole sequence: each frame alone gives the same weight as the whole.
    for i, (lam, j) in enumerate(_partners(x, y, xm, ym, mode)):
        for t in range(6):
            if mode == "mixup" and not np.allclose(x[i, t], x[j, t]):
                d = (x[i, t] - x[j, t]).ravel()
                assert np.dot((xm[i, t] - x[j, t]).ravel(), d) / np.dot(d, d) == pytest.approx(lam, abs=1e-3)


def test_prob_zero_changes_nothing_and_bad_flags_are_named(cv_dir, single_dir):
    cfg = experiment.make_config(dim=16)
    parse = lambda s: experiment.parse_image_example(s, cfg, channels=1)  # noqa: E731
    for (x, y), (xm, ym) in zip(_batches(single_dir, cfg, parse),
                                _batches(single_dir, cfg, parse, dict(alpha=0.4, prob=0.0))):
        np.testing.assert_array_equal(x, xm)
        np.testing.assert_array_equal(y, ym)
    with pytest.raises(ValueError, match="--mixup_prob=1.5"):
        experiment.make_config(mixup_prob=1.5)
    with pytest.raises(ValueError, match="--mixup_alpha=0"):
        experiment.make_config(mixup_prob=0.5, mixup_alpha=0.0)
    with pytest.raises(ValueError, match="static batch size"):
        mixup.draw_mix(tf.TensorSpec([None, 4, 4, 1]), tf.zeros([1]), tf.constant([1, 2]), alpha=1.0, prob=1.0)


def test_hosts_draw_their_own_mixes_and_a_resumed_stream_draws_the_same():
    ds = tf.data.Dataset.from_tensors((tf.zeros([BATCH, 4, 4, 1]), tf.range(BATCH, dtype=tf.float32))).repeat(4)

    def lams(**kw):
        return [x["lam"] for x, _ in mixup.mix_dataset(ds, alpha=0.4, prob=1.0, seed=3, **kw).as_numpy_iterator()]

    first, second = lams(host=0), lams(host=1)
    assert all((a != b).any() for a, b in zip(first, second))  # two hosts, two draws per global batch
    np.testing.assert_array_equal(lams(host=1, start=2)[:2], second[2:])  # resumed after 2 batches
