"""Trainer callbacks every recipe adds (`default_callbacks`), and small helpers around the Trainer.

- `TokensSeenCallback`: tokens seen (the x axis of the book's loss plot) and training speed.
- `faults.NonFiniteLossGuard`: stops at a NaN/inf loss before a broken checkpoint is written.
- `find_callback`, `evaluate_once` (final metrics without evaluating twice).
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from .faults import NonFiniteLossGuard

logger = logging.getLogger(__name__)


class TokensSeenCallback(TrainerCallback):
    """Counts the tokens seen so the loss can be plotted against them (the book's x axis), and
    measures throughput.

    Turns on the Trainer's own counter (`include_num_input_tokens_seen="all"`, summed over all
    processes) unless the recipe chose "non_padding"; every log entry then carries
    `num_input_tokens_seen`. After training, for this run only (a resumed checkpoint's tokens are
    not counted):

    - `session_tokens`, `session_steps`, `session_seconds` (wall clock, evaluations included);
    - `step_seconds`: time inside optimizer steps (forward, backward, update; no evaluation);
    - `seconds_per_step` = step_seconds / session_steps and `tokens_per_second` =
      session_tokens / step_seconds: the training speed, evaluations left out.
    """

    def __init__(self):
        self.start_tokens = 0
        self.start_step = 0
        self.start_time: float | None = None
        self.session_tokens = 0
        self.session_steps = 0
        self.session_seconds = 0.0
        self.step_seconds = 0.0
        self._step_start: float | None = None

    def on_init_end(self, args, state, control, **kwargs):
        if getattr(args, "include_num_input_tokens_seen", "no") in ("no", False, None):
            args.include_num_input_tokens_seen = "all"

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_tokens = state.num_input_tokens_seen
        self.start_step = state.global_step
        self.start_time = time.perf_counter()
        self.step_seconds = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is not None:
            self.step_seconds += time.perf_counter() - self._step_start
            self._step_start = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.start_time is not None:
            self.session_seconds = time.perf_counter() - self.start_time
        self.session_tokens = state.num_input_tokens_seen - self.start_tokens
        self.session_steps = state.global_step - self.start_step

    @property
    def tokens_per_second(self) -> float:
        return self.session_tokens / self.step_seconds if self.step_seconds > 0 else float("nan")

    @property
    def seconds_per_step(self) -> float:
        return self.step_seconds / self.session_steps if self.session_steps > 0 else float("nan")


def default_callbacks() -> list[TrainerCallback]:
    """Callbacks every recipe adds to its Trainer: the `TokensSeenCallback` (tokens seen, speed)
    and the `faults.NonFiniteLossGuard`, which stops training with an error naming the step at the
    first NaN/infinite loss or weight, before a checkpoint of that step is written (it also turns off
    the Trainer's `logging_nan_inf_filter`, which would hide the NaN in the logged loss)."""
    return [TokensSeenCallback(), NonFiniteLossGuard()]


def find_callback(trainer, cls):
    """The instance of callback class `cls` registered on `trainer`, or None."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, cls):
            return callback
    return None


def evaluate_once(trainer) -> dict[str, float]:
    """Final evaluation metrics without evaluating twice: when the Trainer already evaluated at the
    last step (it does when that step is an evaluation step), those logged metrics are returned;
    otherwise `trainer.evaluate()` runs. Call it on every process."""
    step = trainer.state.global_step
    logged: dict[str, float] = {}
    for entry in trainer.state.log_history:
        if entry.get("step") == step:
            logged.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    eval_dataset = trainer.eval_dataset
    names = [f"eval_{name}_loss" for name in eval_dataset] if isinstance(eval_dataset, dict) else ["eval_loss"]
    if step > 0 and all(name in logged for name in names):
        return logged
    return trainer.evaluate()


__all__ = [
    "TokensSeenCallback",
    "default_callbacks",
    "find_callback",
    "evaluate_once",
]
