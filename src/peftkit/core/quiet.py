"""Silence the exact import-time log lines of optional quantisation backends, and nothing else.

``import peft`` imports bitsandbytes and torchao when they are installed. On a CPU-only machine they log, at
import: torchao "Failed to load .../_C_*.so" (kernels built for another Python / CUDA), torch's pytree
"<enum ...> is an Enum subclass and is now natively supported ..." (torchao registering its enums), and
bitsandbytes "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional kernel package).
None of them is actionable for a peftkit user and they bury a one-line error, so :func:`quiet_backend_logs`
adds a filter to exactly those three loggers that drops records matching exactly those messages. Other
records of those loggers still pass.
"""

from __future__ import annotations

import logging

# logger name -> the start of the message (the format string, before %-arguments) that is dropped
_NOISE: dict[str, tuple[str, ...]] = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


class _DropBackendNoise(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith(self.prefixes)


def quiet_backend_logs() -> None:
    """Install the filters (idempotent); call before ``peft``, ``torchao`` or ``bitsandbytes`` is imported."""
    for name, prefixes in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBackendNoise) for f in logger.filters):
            logger.addFilter(_DropBackendNoise(prefixes))


__all__ = ["quiet_backend_logs"]
