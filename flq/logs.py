"""FLQ's logger, and silencing of known, harmless library noise.

The logger is a child of Flower's (``flwr.flq``) so FLQ's progress lines travel wherever
Flower's do: the console, ``flwr run --stream`` and the SuperLink's log store.
"""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger("flwr.flq")

_QUIET_WARNINGS = (
    r".*torch\.jit\.script_method.* is deprecated",
    r".*is_gradient_checkpointing.* is deprecated",
    r"Tip: In future versions of Ray",
)


class MessageFilter(logging.Filter):
    """Drop log records containing ``fragment`` (after the first one if ``keep_first``)."""

    def __init__(self, fragment: str, keep_first: bool = False) -> None:
        super().__init__()
        self.fragment = fragment
        self.keep_first = keep_first

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fragment not in str(record.msg):
            return True
        if self.keep_first:
            self.keep_first = False
            return True
        return False


# Filters attach by logger name, so they work before the library is even imported.
# bitsandbytes: the optional CPU `kernels` package is absent and its fallback is used.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(MessageFilter("Failed to load CPU gemm_4bit_forward"))
# bitsandbytes' 8-bit matmul logs "inputs will be cast ... to float16" on every call.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(MessageFilter("inputs will be cast", keep_first=True))


def quiet_libraries() -> None:
    """Drop per-load chatter (progress bars, load reports) that floods per-client logs."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
