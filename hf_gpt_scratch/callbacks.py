"""Trainer callbacks every recipe adds (`default_callbacks`).

- `faults.NonFiniteLossGuard`: stops at a NaN/inf loss before a broken checkpoint is written.
- `TokensSeenCallback`, `find_callback`: only recipes/classify.py still reads them; the Trainer's own
  counter is `reporting.logged(trainer.state.log_history, "train_tokens_per_second")`.
"""

from __future__ import annotations

from transformers import TrainerCallback

from .faults import NonFiniteLossGuard


class TokensSeenCallback(TrainerCallback):
    """The Trainer's own tokens-per-second counter (`train_tokens_per_second`, logged with
    `include_num_input_tokens_seen`), as last logged."""

    tokens_per_second: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.tokens_per_second = (logs or {}).get("train_tokens_per_second", self.tokens_per_second)


def default_callbacks() -> list[TrainerCallback]:
    """Callbacks every recipe adds to its Trainer: the `faults.NonFiniteLossGuard`, which stops
    training with an error naming the step at the first NaN/infinite loss or weight, before a
    checkpoint of that step is written (it also turns off the Trainer's `logging_nan_inf_filter`,
    which would hide the NaN in the logged loss); and `TokensSeenCallback`."""
    return [TokensSeenCallback(), NonFiniteLossGuard()]


def find_callback(trainer, cls):
    """The instance of callback class `cls` registered on `trainer`, or None."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, cls)), None)


__all__ = ["TokensSeenCallback", "default_callbacks", "find_callback"]
