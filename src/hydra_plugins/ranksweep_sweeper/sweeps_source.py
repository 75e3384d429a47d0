"""The sweep presets (the top-level ``sweeps/`` folder) as Hydra's config group ``sweep``: ``+sweep=NAME``.

Hydra has no group whose folder has another name: a group's name is its folder's name in a config
source. :class:`SweepsConfigSource` (scheme ``ranksweep-sweeps://<folder>``) serves ``sweep/NAME``
from ``<folder>/NAME.yaml`` and nothing else; :class:`SweepsSearchPath` appends it to the search
path only when the primary config is ranksweep's (the search path's ``main`` entry is
:func:`ranksweep.compose.conf_dir` or ``pkg://ranksweep.conf``), so other Hydra apps in the same
environment are untouched. Appended, it comes after the primary tree and the other plugins'
entries: a ``sweep/`` group of the user's (``--config-dir``, ``hydra.searchpath``) adds its options
beside these.

Hydra imports this module for every app at start-up: only Hydra's own plugin bases here, ranksweep
itself is imported when a search path has a ``main`` entry to compare.
"""

from __future__ import annotations

import os
from typing import List, Optional

from hydra._internal.core_plugins import file_config_source
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult
from hydra.plugins.search_path_plugin import SearchPathPlugin

# ranksweep.compose.SWEEP_GROUP and SWEEPS_SCHEME, written out: importing ranksweep here would cost every app.
GROUP = "sweep"
SCHEME = "ranksweep-sweeps"


class SweepsConfigSource(file_config_source.FileConfigSource):
    """A folder of YAML files served as the one group ``sweep``: its root holds only that group.

    Paths Hydra passes are relative to the source's root (``""``, ``"sweep"``, ``"sweep/rank_doubling"``);
    the file source underneath reads them relative to the folder, without the group's name.
    ``ranksweep-sweeps://`` (no folder) means ranksweep's own presets (:func:`ranksweep.compose.sweeps_dir`).
    """

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        if not self.path:
            from ranksweep.compose import sweeps_dir

            self.path = str(sweeps_dir())

    @staticmethod
    def scheme() -> str:
        return SCHEME

    @staticmethod
    def _inner(config_path: str) -> Optional[str]:
        """``sweep/NAME`` -> ``NAME``, ``sweep`` -> ``""``; None for a path outside the group."""
        config_path = config_path.strip("/")
        if config_path == GROUP:
            return ""
        if config_path.startswith(GROUP + "/"):
            return config_path[len(GROUP) + 1:]
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        inner = self._inner(config_path)
        if not inner:
            raise ConfigLoadError(f"Config not found : {config_path} (in {self.full_path()})")
        return super().load_config(inner)

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return self.available()
        inner = self._inner(config_path)
        return inner is not None and super().is_group(inner)

    def is_config(self, config_path: str) -> bool:
        inner = self._inner(config_path)
        return bool(inner) and super().is_config(inner)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        # Written here, not ConfigSource._list_add_result: that one asks is_group/is_config with the
        # folder's own paths, which lack the group's name.
        if config_path.strip("/") == "":
            wanted = results_filter in (None, ObjectType.GROUP)
            return [GROUP] if wanted and self.available() else []
        inner = self._inner(config_path)
        if inner is None or not super().is_group(inner):
            return []
        folder = os.path.realpath(os.path.join(self.path, inner))
        names = set()
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if name.startswith(("__", ".")):
                continue
            if os.path.isdir(full) and results_filter in (None, ObjectType.GROUP):
                names.add(name)
            if name.endswith(".yaml") and os.path.isfile(full) and results_filter in (None, ObjectType.CONFIG):
                names.add(name[: -len(".yaml")])
        return sorted(names)


class SweepsSearchPath(SearchPathPlugin):
    """Appends ``ranksweep-sweeps://<ranksweep's sweeps folder>`` when the primary config is ranksweep's."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        main = [e.path for e in search_path.get_path() if e.provider == "main"]
        if not main:
            return
        try:
            from ranksweep.compose import is_ranksweep_tree, sweeps_dir
        except ImportError:  # a broken or half-removed ranksweep must not break other apps
            return
        if is_ranksweep_tree(main[0]):
            search_path.append(provider="ranksweep", path=f"{SCHEME}://{sweeps_dir()}")
