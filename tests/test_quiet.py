"""bitsandbytes' hub-kernel warning (printed on CPUs with AVX512-BF16 when the hub is out of reach) becomes one
line of ours that says what runs instead; other bitsandbytes warnings pass."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ranksweep import quiet


def test_the_warning_we_replace_is_the_one_bitsandbytes_logs():
    spec = importlib.util.find_spec(quiet.BNB_CPU_LOGGER)
    assert spec is not None and spec.origin
    source = Path(spec.origin).read_text()
    # the module logs through a logger named after itself, whose name the filter is put on
    assert quiet._HUB_KERNEL in source and "logger = logging.getLogger(__name__)" in source


def test_replaced_by_one_line_and_other_warnings_pass(caplog):
    quiet.install()
    quiet.install()  # once per process, however often it is called
    logger = logging.getLogger(quiet.BNB_CPU_LOGGER)
    assert sum(isinstance(f, quiet._HubKernelFilter) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1",
                       "Cannot reach https://huggingface.co\nWe couldn't connect (offline)")
        logger.warning("another bitsandbytes warning")
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warned] == ["another bitsandbytes warning"]
    said = [r for r in caplog.records if r.name == "ranksweep"]
    assert [r.getMessage() for r in said] == [quiet.SAID] and said[0].levelno == logging.INFO
