"""AdamW with linear warm-up then cosine decay, and weight decay only where it regularises."""
from __future__ import annotations

import keras

# Substrings of variable names kept out of AdamW's decoupled weight decay: biases and BatchNorm
# scale/shift (decay only fights the normalisation), the uncertainty log-variances and GradNorm
# task weights (decay would bias the weighting, not regularise the net), cross-stitch matrices
# (decay would pull them away from the identity towards 0).
NO_DECAY = ("bias", "gamma", "beta", "log_var", "task_weight", "stitch")


def make_optimizer(train_config, total_steps):
    """AdamW(lr: 0 -> learning_rate over warmup_steps, then cosine -> 0 at total_steps)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; Received: total_steps={total_steps}")
    if train_config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; Received: learning_rate={train_config.learning_rate}")
    warmup = max(0, min(int(train_config.warmup_steps), total_steps - 1))
    decay_steps = max(1, total_steps - warmup)
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, warmup_target=train_config.learning_rate, warmup_steps=warmup)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(train_config.learning_rate, decay_steps)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=train_config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer
