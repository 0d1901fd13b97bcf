"""Training: compile, resumable fit with the usual callbacks, multi-stage schedules, and switches for
determinism, mixed precision, XLA and tf.distribute.

A run lives in one directory. Killing a run and starting the same command again continues from the
last completed epoch (weights, optimizer state, epoch counter and best-epoch bookkeeping come back
from `RunCheckpoint`, which writes every file atomically); a multi-stage run also skips the stages
already finished.

Modules: `schedules` (learning-rate schedules), `session` (seeds, determinism, mixed precision),
`distribution` (tf.distribute strategies and worker roles), `compile` (`compile_model`),
`checkpoint` (`RunCheckpoint`, `save_model`, `read_history`), `batchnorm` (`precise_bn`), `clock`
(tlunet datasets' epoch clock), `fitting` (`fit`) and `stages` (`run_stages`).
"""

from tlunet.training.batchnorm import precise_bn
from tlunet.training.checkpoint import RunCheckpoint, TrainingDiverged, read_history, save_model
from tlunet.training.compile import compile_model
from tlunet.training.distribution import (DISTRIBUTE, get_distribution_strategy, weights_digest,
                                          worker_role)
from tlunet.training.fitting import fit
from tlunet.training.schedules import LR_SCHEDULES, check_lr_schedule, lr_at, lr_schedule_callback
from tlunet.training.session import MIXED_PRECISION, configure
from tlunet.training.stages import run_stages

__all__ = ["DISTRIBUTE", "LR_SCHEDULES", "MIXED_PRECISION", "RunCheckpoint", "TrainingDiverged", "check_lr_schedule",
           "compile_model", "configure", "fit", "get_distribution_strategy", "lr_at", "lr_schedule_callback",
           "precise_bn", "read_history", "run_stages", "save_model", "weights_digest",
           "worker_role"]
