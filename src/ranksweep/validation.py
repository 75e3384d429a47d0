"""One-line checks that name the key a user would type: shared by the run config
(:mod:`ranksweep.config`, :mod:`ranksweep.checks`) and the sweeper's settings
(:mod:`ranksweep.sweep.settings`). OmegaConf types a value; it has no ranges, choices or
messages in a user's words, which is what is kept here. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Callable, Optional

from ranksweep.errors import ConfigError

Check = Callable[[str, Any], None]  # (key, value) -> raise ConfigError naming the key


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(key: str, value: Any) -> None:
    require(is_int(value) and value > 0, f"{key} must be a positive integer, got {value!r}")


def choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{key} must be one of {', '.join(choices)}; got {value!r}")


def not_empty(key: str, value: Any) -> None:
    require(value is not None and bool(str(value).strip()), f"{key} must not be empty")


def one_of(*choices: str) -> Check:
    """``key must be a, b or c, got 'd'``."""
    words = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
    return lambda key, value: require(value in choices, f"{key} must be {words}, got {value!r}")


def integer(at_least: int) -> Check:
    return lambda key, value: require(is_int(value) and value >= at_least,
                                      f"{key} must be an integer >= {at_least}, got {value!r}")


def number(above: Optional[float] = None, at_least: Optional[float] = None, below: Optional[float] = None,
           at_most: Optional[float] = None) -> Check:
    """A finite number within the given bounds; the message says which."""
    def check(key: str, value: Any) -> None:
        ok = is_number(value) and (above is None or value > above) and (at_least is None or value >= at_least) \
            and (below is None or value < below) and (at_most is None or value <= at_most)
        if ok:
            return
        if above == 0 and at_least is below is at_most is None:
            raise ConfigError(f"{key} must be a positive number, got {value!r}")
        if at_least is not None and below is at_most is None:
            raise ConfigError(f"{key} must be a finite number >= {at_least:g}, got {value!r}")
        low = f"({above:g}" if above is not None else f"[{at_least:g}"
        high = f"{below:g})" if below is not None else f"{at_most:g}]"
        raise ConfigError(f"{key} must be in {low}, {high}, got {value!r}")
    return check


def checked(default: Any, check: Optional[Check] = None) -> Any:
    """A dataclass field with its default and its check (run by :func:`run_checks`)."""
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def run_checks(obj: Any, prefix: str = "") -> None:
    """Every field check of a dataclass instance, in field order; the key is ``prefix + name``."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            check(prefix + f.name, getattr(obj, f.name))


def unknown_keys(values: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys of ``values`` (a container) that the dataclass ``schema`` does not have, as dotted paths."""
    if not isinstance(values, dict):
        return []
    hints = typing.get_type_hints(schema)
    out = []
    for key, value in values.items():
        if key not in hints:
            out.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]):
            out += unknown_keys(value, hints[key], f"{prefix}{key}.")
    return out


def describe_omegaconf_error(exc: Exception) -> str:
    """One line for an OmegaConf error, starting with the key: ``lora.r: 'abc' is not an integer``."""
    key = getattr(exc, "full_key", None)
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    for pattern, repl in _OMEGACONF_MESSAGES:
        msg = re.sub(pattern, repl, msg)
    if key and msg == "unknown config key":
        msg += did_you_mean(str(key))
    return f"{key}: {msg}" if key else msg


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


# hydra-optuna-sweeper's names and other ways to say ours.
SWEEPER_ALIASES = {"n_trials": "search_budget", "search_space": "search", "min_rank": "start_rank",
                   "seeds": "seeds_per_rank", "n_seeds": "seeds_per_rank", "metric": "objective",
                   "threshold": "margin", "early_stopping_patience": "patience"}
SWEEPER = "hydra.sweeper."


def did_you_mean(key: str) -> str:
    """`` (did you mean trainer.lr?)`` for a key another tool's name or a typo of one of ours, else ''."""
    import difflib

    last = key.rsplit(".", 1)[-1]
    if key.startswith(SWEEPER):
        from ranksweep.sweep.settings import SweepSettings

        names = [f.name for f in dataclasses.fields(SweepSettings)]
        near = ([SWEEPER_ALIASES[last]] if SWEEPER_ALIASES.get(last) in names else
                difflib.get_close_matches(last, names, n=1, cutoff=0.7)
                or [n for n in names if len(last) >= 4 and n.startswith(last)][:1])
        return f" (did you mean {SWEEPER}{near[0]}?)" if near else ""
    from ranksweep.config import RunConfig

    if last in ALIASES:
        return f" (did you mean {ALIASES[last]}?)"
    known = [k for k, _ in _leaf_keys(RunConfig)]
    group = key.rsplit(".", 1)[0] + "." if "." in key else ""
    for pool, cutoff in (([k for k in known if k.startswith(group) and "." not in k[len(group):]], 0.75),
                         (known, 0.85)):
        near = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in pool], n=1, cutoff=cutoff)
        if near:
            return f" (did you mean {next(k for k in pool if k.rsplit('.', 1)[-1] == near[0])}?)"
    return ""


def _leaf_keys(schema: type, prefix: str = "") -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hints[f.name]))
    return out


# OmegaConf's messages, reworded for someone who typed an override.
_OMEGACONF_MESSAGES = (
    (r"^Value (.*) of type '[^']*' could not be converted to Integer$", r"\1 is not an integer"),
    (r"^Value (.*) of type '[^']*' could not be converted to Float$", r"\1 is not a number"),
    (r"^Value (.*) is not a valid bool \(type [^)]*\)$", r"\1 is not a boolean"),
    (r"could not be converted to Integer", "is not an integer"),
    (r"could not be converted to Float", "is not a number"),
    (r"could not be converted to Boolean", "is not a boolean"),
    (r"^Key '[^']*' (?:is )?not in (?:struct|'\w+')$", "unknown config key"),
    (r"^field '[^']*' is not Optional$", "must not be null"),
    (r"^Missing mandatory value: ", "missing value for "),
)
