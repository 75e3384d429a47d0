"""An offline machine: hub requests fail at once with one line, not after 20 s of retries and warnings."""

from __future__ import annotations

import pytest
from helpers.run import ranksweep

from ranksweep.hub import hub_reachable, offline_if_unreachable

PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def no_hub(monkeypatch):
    """A hub endpoint whose host can never resolve (.invalid, RFC 2606), no proxy, no offline switch."""
    for key in (*PROXIES, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.ranksweep.invalid")
    return monkeypatch


def test_an_unresolvable_hub_turns_the_libraries_offline(no_hub):
    import os

    assert not hub_reachable()
    offline_if_unreachable()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_a_users_setting_or_a_proxy_wins(no_hub):
    import os

    no_hub.setenv("HF_HUB_OFFLINE", "0")
    offline_if_unreachable()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    no_hub.delenv("HF_HUB_OFFLINE")
    no_hub.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert hub_reachable()  # the proxy resolves names for us: not ours to judge
    offline_if_unreachable()
    assert "HF_HUB_OFFLINE" not in os.environ


@pytest.mark.parametrize("args, says", [
    (("data=hub", "data.path=someone/some-dataset"), "data.path: cannot load hub dataset 'someone/some-dataset'"),
    (("model.id=someone/some-model",), "model.id: cannot load 'someone/some-model'"),
])
def test_hub_ids_offline_are_one_line(tmp_path, args, says):
    env = {"HF_ENDPOINT": "https://hub.ranksweep.invalid", "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": ""}
    proc = ranksweep(tmp_path, "model=tiny_llama", "trainer=tiny", "logger=none", *args, **env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"ranksweep: error: {says}"), proc.stderr
