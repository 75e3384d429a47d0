"""Where ranksweep's configs live, composing one, and one-line descriptions of Hydra's errors.

Shared by the Hydra entry point (:mod:`ranksweep.cli`) and the subcommands
(:mod:`ranksweep.commands`), so that neither imports the other.

The config tree is the repo's top-level ``conf/`` and the sweep presets its top-level ``sweeps/``
(one YAML per preset, used as ``+sweep=NAME``). The wheel ships both inside the package, mapped
there at build time (pyproject.toml's ``package-dir``): ``ranksweep/conf/`` and ``ranksweep/sweeps/``.
:func:`conf_dir` and :func:`sweeps_dir` find them in either place, and Hydra gets the tree as an
absolute folder (its ``config_path``). The presets reach Hydra as the group ``sweep`` through a
config source of ranksweep's Hydra plugin (:mod:`hydra_plugins.ranksweep_sweeper.sweeps_source`).
The environment variable ``RANKSWEEP_CONF`` points Hydra at a folder instead (a full copy of the
tree; the presets stay available beside it). Users add config groups of their own with Hydra's search
path: ``--config-dir my_conf`` or ``hydra.searchpath=[file://my_conf]``.

:class:`MaskSavedSecrets` is the Hydra callback (``hydra.callbacks`` in ``config.yaml``) that masks
secrets in the files Hydra saves for a job (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``,
the sweep's ``multirun.yaml``) when a config file, not the command line, brought them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from ranksweep.errors import ConfigError

CONF_PACKAGE = "ranksweep.conf"  # the tree's place inside an installed wheel (ranksweep/conf/)
CONF_ENV = "RANKSWEEP_CONF"
CONFIG_NAME = "config"
VERSION_BASE = "1.3"
SWEEP_GROUP = "sweep"  # +sweep=NAME: the presets of sweeps/
SWEEPS_SCHEME = "ranksweep-sweeps"  # the Hydra config source that serves them (hydra_plugins.ranksweep_sweeper)


def _base() -> Path:
    """The folder holding ``conf/`` and ``sweeps/``: the installed package itself (a wheel maps both into
    ``<site-packages>/ranksweep/``), else the source checkout's top level (an editable install in compat
    mode, or src/ on sys.path: only ``src/`` is importable there, ``ranksweep.conf`` is not)."""
    import ranksweep

    package = Path(ranksweep.__file__).resolve().parent
    if (package / "conf" / f"{CONFIG_NAME}.yaml").is_file():
        return package
    return package.parents[1]  # <repo>/src/ranksweep -> <repo>


def conf_dir() -> Path:
    """The config tree Hydra reads: the folder $RANKSWEEP_CONF (a user's full replacement tree), else
    ranksweep's own (``ranksweep/conf/`` in a wheel, ``<repo>/conf/`` in a source checkout)."""
    folder = os.environ.get(CONF_ENV)
    if folder:
        return Path(folder).expanduser().resolve()
    return _base() / "conf"


def sweeps_dir() -> Path:
    """The sweep presets, one YAML per preset: ``ranksweep/sweeps/`` in a wheel, ``<repo>/sweeps/`` in a
    source checkout."""
    return _base() / "sweeps"


def config_path() -> str:
    """Hydra's ``config_path`` for the primary config: :func:`conf_dir`, absolute (Hydra reads an absolute
    ``config_path`` as a folder on its search path, whatever the calling module)."""
    return str(conf_dir())


def is_ranksweep_tree(path: str) -> bool:
    """Whether a Hydra search path entry (the ``main`` one: the primary config's place) is ranksweep's config
    tree: :func:`conf_dir` (with or without ``file://``), ranksweep's own tree, or ``pkg://ranksweep.conf``.
    The sweep presets join the search path only then, so that other Hydra apps are left as they are."""
    if path == f"pkg://{CONF_PACKAGE}":
        return True
    if path.startswith("file://"):
        path = path[len("file://"):]
    if not path or "://" in path:
        return False
    try:
        here = Path(path).expanduser().resolve()
        return here in (conf_dir(), _base() / "conf")
    except (OSError, RuntimeError):
        return False


def compose(overrides: Sequence[str] = (), *, return_hydra_config: bool = False):
    """The primary config composed with ``overrides``, as the ``ranksweep`` command composes it.

    Composition type-checks against the structured schema (:class:`ranksweep.config.RunConfig`);
    a bad override raises :class:`ranksweep.errors.ConfigError` with a one-line message that
    names the key. Values are validated by :func:`ranksweep.config.to_run_config`, not here.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    from ranksweep.config import register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=config_path(), version_base=VERSION_BASE):
            return hydra_compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException, YAMLError, ValueError) as exc:
        raise ConfigError(describe_error(exc)) from exc


# hydra.sweeper.search.trainer.lr=... or hydra.sweeper.params.lora.targets=... as typed on a command line.
_SWEEPER_DICT_ITEM = re.compile(r"\+{0,2}hydra\.sweeper\.(search|params)\.([^=]+)=(.*)", re.S)


def sweeper_dict_items(args: Sequence[str]) -> list[str]:
    """The command line with ``hydra.sweeper.search.<key>=<text>`` (and ``.params.``) gathered into one
    ``+hydra.sweeper.search={<key>: '<text>', ...}``, which Hydra merges into the config's.

    Hydra cannot take them as typed: it reads the dotted key as a path (``search.trainer.lr``) where
    ranksweep's keys are config keys with dots in them (``trainer.lr``), and it refuses a range under
    ``hydra.*`` ("Sweeping over Hydra's configuration is not supported")."""
    out: list[str] = []
    found: dict[str, dict[str, str]] = {}
    at: dict[str, int] = {}  # where each gathered override goes: the place of its first item
    for arg in args:
        m = _SWEEPER_DICT_ITEM.fullmatch(arg)
        if m is None:
            out.append(arg)
            continue
        name, key, text = m.groups()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]  # quoted for Hydra (hydra.sweeper.search.trainer.lr='interval(1e-4,1e-2)')
        if name not in found:
            found[name], at[name] = {}, len(out)
            out.append("")
        found[name][key.strip()] = text
    if found:
        from ranksweep.sweep.overrides import quote

        for name, items in found.items():
            value = ", ".join(f"{k}: {quote(v)}" for k, v in items.items())
            out[at[name]] = f"+hydra.sweeper.{name}={{{value}}}"  # +: merged, adding keys
    return out


def describe_error(exc: BaseException) -> str:
    """One line for a Hydra or OmegaConf error, naming the key when there is one.

    A composition error caused by an OmegaConf error (a value of the wrong type, a key
    the schema does not have, in an override or in a config file) becomes
    ``lora.r: 'abc' is not an integer`` (plus ``(in model/my_model)`` for a file); other
    Hydra errors keep their message and the options they list, without Hydra's search path.
    """
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    from ranksweep.validation import describe_omegaconf_error

    if isinstance(exc, OmegaConfBaseException):
        return describe_omegaconf_error(exc, suggest_key)
    if isinstance(exc, ConfigCompositionException):
        # Hydra wraps the OmegaConf error: as the cause (an override), or as the context (a config file).
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, OmegaConfBaseException) and getattr(inner, "full_key", None):
            line = describe_omegaconf_error(inner, suggest_key)
            where = re.match(r"In '([^']+)': ", str(exc))
            return f"{line} (in {where.group(1)})" if where else line
    text = " ".join(str(exc).split())
    # Hydra's "Could not load 'model/nope'": keep the message and the options it lists, not its search path.
    text = text.split(" Config search path:")[0]
    if re.search(r"hydra/launcher/(submitit_\w+|slurm_\w+)", text):
        from ranksweep.extras import missing

        hint = missing("slurm")
        text += f" ({hint})" if hint else ""
    return text or type(exc).__name__


def suggest_key(key: str) -> str:
    """`` (did you mean ...?)`` for an unknown key of the run config, or of the sweeper's (``hydra.sweeper.*``)."""
    from ranksweep.sweep import settings

    if key.startswith(settings.SWEEPER):
        return settings.suggest(key)
    from ranksweep.config import suggest

    return suggest(key)


class MaskSavedSecrets:
    """Hydra callback: rewrite what Hydra saved for a job with :func:`ranksweep.urls.mask_secrets` applied.

    The command line is masked before Hydra reads it (``ranksweep.cli``); this covers secrets that come
    from config files. Hydra saves a job's files just before ``on_job_start``. Duck-typed (no import of
    Hydra's ``Callback`` base), so that importing this module stays cheap; it never raises.
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        files = []
        sub = OmegaConf.select(config, "hydra.output_subdir")
        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        if sub is not None and out:
            files += [Path(str(out)) / str(sub) / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        if str(OmegaConf.select(config, "hydra.mode")) == "RunMode.MULTIRUN":
            files.append(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / "multirun.yaml")
        for path in files:
            try:
                _mask_yaml(path)
            except Exception as exc:  # noqa: BLE001 - a callback must not fail the job
                import logging

                logging.getLogger("ranksweep").warning("could not mask secrets in %s: %s", path, exc)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_job_end(self, config: Any, **kwargs: Any) -> None:
        pass


def _mask_yaml(path: Path) -> None:
    """Rewrite the YAML file ``path`` (atomically) when masking secrets changes it."""
    from omegaconf import OmegaConf

    from ranksweep.files import atomic_write_text
    from ranksweep.urls import mask_secrets

    if not path.is_file():
        return
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    masked = mask_secrets(data)
    if masked != data:
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(masked)))


def name_follows_id(cfg, overrides) -> None:
    """``model.id=X`` without ``model.name=``: the model group's name would label another model (in the
    log, config.yaml, W&B and artifact names), so the name becomes X's last part (``Llama-3.2-1B``)."""
    from omegaconf import open_dict, read_write

    keys = {str(o).split("=", 1)[0].lstrip("+~") for o in overrides}
    if "model.id" not in keys or "model.name" in keys or "model" not in cfg:
        return
    last = re.split(r"[/\\:]", str(cfg.model.id).rstrip("/\\"))[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"\.gguf$", "", last, flags=re.I)).strip("._") or "model"
    with read_write(cfg), open_dict(cfg):
        cfg.model.name = name
