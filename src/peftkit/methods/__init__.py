"""Every method peftkit ships, registered by name. Config classes are light; apply functions import lazily."""

from peftkit.core.registry import register_method
from peftkit.methods._lazy import lazy
from peftkit.methods.baseline.config import FullFineTune, HeadOnly

register_method("full", FullFineTune, lazy("peftkit.methods.baseline.apply", "apply_full"),
                "full fine-tuning (every parameter trains)")
register_method("head_only", HeadOnly, lazy("peftkit.methods.baseline.apply", "apply_head_only"),
                "linear probe: only the task head trains")
