"""Library warnings ranksweep knows to be harmless, replaced by one line that says what runs instead.

bitsandbytes, imported on a CPU with AVX512-BF16, fetches a fused 4-bit CPU kernel from the Hugging Face
hub (``kernels-community/quantization-bitsandbytes``) and logs a WARNING, with the hub's multi-line
offline error, when it cannot. That kernel serves the AVX512-BF16 inference path, which ranksweep turns
off on every 4-bit layer (:func:`ranksweep.models.disable_cpu_bf16_repack`: it corrupts later
gradients), so a trial never uses it. The standard library has no "replace this record" hook on a
logger we do not own: a :class:`logging.Filter` on bitsandbytes' logger drops the record and logs ours.
"""

from __future__ import annotations

import logging

__all__ = ["BNB_CPU_LOGGER", "install"]

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_HUB_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"
SAID = ("bitsandbytes: the hub's fused CPU 4-bit kernel cannot be fetched (offline); ranksweep does not use it "
        "(AVX512-BF16 repacking is off) and runs bitsandbytes' built-in CPU kernels")


class _HubKernelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_HUB_KERNEL):
            logging.getLogger("ranksweep").info(SAID)
            return False
        return True


def install() -> None:
    """Put the filter on bitsandbytes' CPU logger (before bitsandbytes is imported; once per process)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _HubKernelFilter) for f in logger.filters):
        logger.addFilter(_HubKernelFilter())
