"""Compatibility module: the training code lives in `tlunet.training` (atomic writes in `tlunet.files`)."""

from tlunet.files import atomic_write
from tlunet.training import (DISTRIBUTE, LR_SCHEDULES, MIXED_PRECISION, RunCheckpoint, TrainingDiverged,
                             check_lr_schedule, compile_model, configure, fit, get_distribution_strategy, lr_at,
                             lr_schedule_callback, precise_bn, read_history, run_stages, save_model, weights_digest,
                             worker_role)

__all__ = ["DISTRIBUTE", "LR_SCHEDULES", "MIXED_PRECISION", "RunCheckpoint", "TrainingDiverged", "atomic_write",
           "check_lr_schedule", "compile_model", "configure", "fit", "get_distribution_strategy", "lr_at",
           "lr_schedule_callback", "precise_bn", "read_history", "run_stages", "save_model", "weights_digest",
           "worker_role"]
