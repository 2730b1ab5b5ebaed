"""hf_peft."""

from peftkit.core.quiet import quiet_backend_logs

quiet_backend_logs()  # before any peft import: drop the bitsandbytes / torchao import-time log lines
