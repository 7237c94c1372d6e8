"""The train stage's own callbacks (pipeline/training/callbacks.py) inside a real `model.fit`."""
from __future__ import annotations

import keras
import numpy as np

from models.optimizer import make_optimizer
from pipeline.config import TrainConfig
from pipeline.training.callbacks import AveragedWeightsForValidation


def test_ema_is_what_validation_and_the_checkpoint_see_while_training_goes_on_from_raw_weights():
    optimizer = make_optimizer(TrainConfig(ema=0.5, warmup_steps=0, learning_rate=0.1), total_steps=10)
    assert optimizer.use_ema and optimizer.ema_overwrite_frequency is None
    assert not make_optimizer(TrainConfig(), total_steps=10).use_ema
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    seen = {}

    class Look(keras.callbacks.Callback):  # stands for the checkpoint (before) and the backup (after)
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_train_batch_end(self, batch, logs=None):
            seen["trained"] = model.get_weights()

        def on_epoch_end(self, epoch, logs=None):
            seen.setdefault(self.name, []).append(model.get_weights())
            seen.setdefault(f"{self.name} average", []).append(
                [average.numpy() for average in optimizer._model_variables_moving_average])
            seen.setdefault(f"{self.name} trained", []).append(seen["trained"])

    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    model.fit(x, x.sum(1, keepdims=True), batch_size=4, epochs=3, verbose=0, validation_data=(x, x[:, :1]),
              validation_freq=[2, 3], callbacks=[Look("checkpoint"), AveragedWeightsForValidation(), Look("backup")])
    for epoch in range(3):
        trained, average = seen["backup trained"][epoch], seen["backup average"][epoch]
        assert not np.allclose(trained[0], average[0])
        for got, want in zip(seen["backup"][epoch], trained):  # the backup holds what training goes on from
            np.testing.assert_array_equal(got, want)
        # The checkpoint sees the average on the validated epochs, the raw weights on the others.
        for got, want in zip(seen["checkpoint"][epoch], average if epoch in (1, 2) else trained):
            np.testing.assert_array_equal(got, want)


def test_encoder_thaw_thaws_once_at_the_epoch_boundary_nearest_its_share_of_the_schedule():
    """train.thaw_at 0.67 of a 12 x 70-step schedule: 8 frozen epochs (560 steps, the boundary nearest
    562.8), then the thaw, once, and the time budget's later plans start timing afresh."""
    from pipeline.training.callbacks import EncoderThaw

    class Trainer:
        thawed, thaws = False, 0
        optimizer = make_optimizer(TrainConfig(), total_steps=12 * 70)

        def thaw(self):
            self.thawed, self.thaws = True, self.thaws + 1
            return 1

    class Budget:
        restarts = 0

        def restart_timing(self):
            self.restarts += 1

    trainer, budget = Trainer(), Budget()
    thaw = EncoderThaw(0.67, "P1", budget)
    thaw.set_model(trainer)
    thaw.set_params({"steps": 70, "epochs": 12})
    for epoch in range(12):
        trainer.optimizer.iterations.assign(epoch * 70)
        thaw.on_epoch_begin(epoch)
        assert trainer.thawed == (epoch >= 8), epoch
    assert trainer.thaws == 1 and budget.restarts == 1
