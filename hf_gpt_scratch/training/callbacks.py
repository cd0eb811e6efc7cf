"""Trainer callbacks every recipe adds (`default_callbacks`).

- `LogLastStepCallback`: the Trainer logs at the last step too, so its tokens-seen and speed counters
  (`reporting.logged(trainer.state.log_history, "train_tokens_per_second")`) cover the whole run.
- `faults.NonFiniteLossGuard`: stops at a NaN/inf loss before a broken checkpoint is written.
- `evaluate_once`: the final evaluation, reusing the Trainer's own at the last step (a resumed run is
  not evaluated twice).
"""

from __future__ import annotations

from transformers import TrainerCallback

from .faults import NonFiniteLossGuard


class LogLastStepCallback(TrainerCallback):
    """Makes the Trainer log at the last step (not only every `logging_steps`), so the last logged
    tokens seen and `train_tokens_per_second` (the Trainer's counters, with
    `include_num_input_tokens_seen`) are the whole run's."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True


def default_callbacks() -> list[TrainerCallback]:
    """Callbacks every recipe adds to its Trainer: the `faults.NonFiniteLossGuard`, which stops
    training with an error naming the step at the first NaN/infinite loss or weight, before a
    checkpoint of that step is written (it also turns off the Trainer's `logging_nan_inf_filter`,
    which would hide the NaN in the logged loss); and the `LogLastStepCallback`."""
    return [LogLastStepCallback(), NonFiniteLossGuard()]


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


__all__ = ["LogLastStepCallback", "default_callbacks", "evaluate_once"]
