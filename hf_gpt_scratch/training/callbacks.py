"""Trainer callbacks every recipe adds (`default_callbacks`), `evaluate_once`, `train_without_evaluation`."""

from __future__ import annotations

import logging

from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from .faults import NonFiniteLossGuard

logger = logging.getLogger(__name__)


class LogLastStepCallback(TrainerCallback):
    """Log at the last step too: the Trainer's last logged tokens seen and tokens per second are the run's."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True


def default_callbacks() -> list[TrainerCallback]:
    """`LogLastStepCallback` and `faults.NonFiniteLossGuard` (stops at a NaN or infinite loss or weight)."""
    return [LogLastStepCallback(), NonFiniteLossGuard()]


def evaluate_once(trainer) -> dict[str, float]:
    """Final evaluation metrics: those the Trainer logged at the last step when it evaluated there
    (a resumed run is not evaluated twice), else `trainer.evaluate()`. Call it on every process."""
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


def train_without_evaluation(training_args, reason: str) -> None:
    """No evaluation data (`reason`, logged as a warning): no evaluation during or before training."""
    logger.warning("%s: training without evaluation.", reason)
    training_args.eval_strategy = IntervalStrategy.NO
    training_args.eval_on_start = False
    training_args.do_eval = False
