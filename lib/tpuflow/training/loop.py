"""The training loop's model and its fit: `train_model` puts a model behind the augmentation layer
(`ondevice.TrainAugment`) when training batches carry transforms or mixup draws, and `fit` trains
that while the callbacks (checkpoints, backups, scores) see the model itself.

Keras only, no TensorFlow (as `tpuflow.inputs.ondevice`): `benchmarks/device_check.py` runs the
real training step with Keras on JAX where TensorFlow is not installed.
"""

from __future__ import annotations

import keras

from tpuflow.inputs import ondevice


def train_model(model: keras.Model, aug: bool, mix: str | None = None, block: int | None = None) -> keras.Model:
    """The model `fit` trains: `model` itself when training batches are plain images, else (with
    augmentation `aug`, or mixup mode `mix`: the datasets' inputs are then the dicts
    `ondevice.TrainAugment` takes; `block`: mixup's, see `mixup.draw_mix`) `model` behind `ondevice.TrainAugment`,
    sharing its weights and its optimizer and compiled like it (loss, metrics, XLA setting), so
    that checkpoints, backups and predictions stay `model`'s (see :func:`fit`). Build it where
    `model` was built (inside its distribution scope), after compiling `model`. Images the
    augmentation cannot turn (not square) are refused here, before any training."""
    if not aug and not mix:
        return model
    if aug:
        ondevice.check_square(*model.inputs[0].shape[-3:-1])
    specs = {"image": (tuple(model.inputs[0].shape[1:]), "float32")}
    if aug:
        specs["transform"] = ((), "int32")
    if mix:
        specs.update(partner=((), "int32"), lam=((), "float32"))
        if mix == "cutmix":
            specs["box"] = ((4,), "float32")
    inputs = {key: keras.Input(shape=shape, dtype=dtype, name=key) for key, (shape, dtype) in specs.items()}
    trainer = keras.Model(inputs, model(ondevice.TrainAugment(block)(inputs)), name=f"{model.name}_train")
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
    trainer.compile(**{**config, "optimizer": model.optimizer})
    return trainer


class _StopWith(keras.callbacks.Callback):
    """Passes a callback's `model.stop_training` on to the trainer that `fit` runs."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_end(self, epoch, logs=None):  # no batch hook: that would make JAX's fit wait on every step
        self.trainer.stop_training = self.trainer.stop_training or self.model.stop_training


def fit(trainer: keras.Model, model: keras.Model, dataset, *, callbacks, epochs: int, steps_per_epoch: int,
        verbose, **kwargs) -> keras.callbacks.History:
    """`trainer.fit` (a :func:`train_model`) with `callbacks` seeing `model`: they save, back up
    and score the real model (the same weights and optimizer), and their History is returned."""
    if trainer is model:
        return model.fit(dataset, callbacks=callbacks, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         verbose=verbose, **kwargs)
    model.stop_training, trainer.history = False, None  # the History is `model`'s (fit returns its own)
    pinned = keras.callbacks.CallbackList([*callbacks, _StopWith(trainer)], add_history=True,
                                          add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
                                          steps=steps_per_epoch, model=model)
    trainer.fit(dataset, callbacks=pinned, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
                **kwargs)
    return model.history
