"""The names of what a sweep stores in its Optuna study: each trial's user attributes and the study's own.

Every writer (``set_user_attr``, ``set_trial_user_attr``, a job's ``set_attrs``) and every reader
(:class:`ranksweep.sweep.results.Trial`, the pruner, the report) names an attribute by one of these
constants. The strings are what studies hold: changing one makes existing studies unreadable.
This module imports nothing.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- a trial's, set as it is claimed
# (ranksweep.sweep.claim): the job it runs and where.
LADDER = "ladder"  # the ladder's key ("default", or its combination of axis values)
RANK = "rank"  # 0: the untrained base
SEED = "seed"
SLOT = "slot"  # which of a rank's search trials
ROLE = "role"  # base | search | rung | budget | prescreen
SEARCHED = "searched"  # the names of the params its search proposed
WORKER = "worker"  # host:pid of the worker that claimed it
OUTPUT_DIR = "output_dir"  # also set by the job
PARENT_TRIAL_NUMBER = "parent_trial_number"  # the previous rank's trial it is compared with while training
BASE_VALUE = "base_value"  # the ladder's base objective
BASE_EVAL_LOSS = "base_eval_loss"  # the base's eval loss: the parent-rank pruner's reference

# A trial's params besides its ladder's axes and its searched values (set as it is claimed).
RANK_PARAM = "rank"
SEED_PARAM = "seed"

# ----------------------------------------------------------------------------- how it ended (or did not)
FAILURE_KIND = "failure_kind"  # infeasible, oom, timeout, cancelled, ... (none: its worker died; run again)
FAIL_REASON = "fail_reason"
CANCEL_REASON = "cancel_reason"  # the stop rule made this speculative rank unnecessary
PRUNED_BY = "pruned_by"  # parent | rung | cancelled
HEARTBEAT_AT = "heartbeat_at"  # storages without Optuna's heartbeat (journal): the worker's last beat
CLAIM_LOST = "claim_lost"  # written by older versions: a trial whose claim another worker won (not read as a result)

# ----------------------------------------------------------------------------- set by the job (ranksweep.job,
# ranksweep.trial.recipe)
ALPHA = "alpha"
TRAINABLE_PARAMS = "trainable_params"
TARGET_MODULES = "target_modules"
DATA_DIGEST = "data_digest"
WANDB_RUN = "wandb_run"
DURATION_S = "duration_s"
PEAK_MEM_GB = "peak_mem_gb"
TOKENS_PER_S = "tokens_per_s"
EVAL_LOSS = "eval_loss"
EXACT_MATCH = "exact_match"
LR = "lr"
SUPERVISED_TOKENS = "supervised_tokens"
STEPS = "steps"
EVAL_EXAMPLES = "eval_examples"  # the per-example results (ranksweep.sweep.stats.Examples) and their fingerprint
ADAPTER = "adapter"  # the trained adapter's own evidence (effective_rank, ...)
# A nested-rank prescreen job's prefixes (hydra.sweeper.prescreen=nested): {"ranks": [b, ...], "prefixes":
# {"b": {"value", "eval_loss", "loss", "tokens", ["correct"], "fingerprint", "n"}}, "drawn": {"b": steps}}
PRESCREEN = "prescreen"

# ----------------------------------------------------------------------------- the study's
STUDY_SPACE = "ranksweep_space"  # what the study sweeps: its ladders, ranks, objective and search
STUDY_SETTINGS = "ranksweep_settings"  # SweepSettings.to_record() of the last run
STUDY_IDENTITY = "ranksweep_identity"  # each ladder's trial config and data (ranksweep.sweep.identity)
