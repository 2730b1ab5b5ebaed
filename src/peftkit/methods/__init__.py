"""Every method peftkit ships, registered by name. Config classes are light; apply functions import lazily."""

from peftkit.core.registry import register_method
from peftkit.methods._lazy import lazy
from peftkit.methods.adapter.config import Adapter
from peftkit.methods.baseline.config import FullFineTune, HeadOnly
from peftkit.methods.deft.config import DEFT
from peftkit.methods.deft.sparse_config import Sparsify
from peftkit.methods.hf_peft.config import IA3, DoRA, LoRA, PrefixTuning, PromptTuning, QLoRA
from peftkit.methods.meft.config import MEFT
from peftkit.methods.point_peft.config import PointPEFT

register_method("full", FullFineTune, lazy("peftkit.methods.baseline.apply", "apply_full"),
                "full fine-tuning (every parameter trains)")
register_method("head_only", HeadOnly, lazy("peftkit.methods.baseline.apply", "apply_head_only"),
                "linear probe: only the task head trains")
register_method("deft", DEFT, lazy("peftkit.methods.deft.apply", "apply_deft"),
                "DEFT (density, arXiv 2402.01911): smooth-L0 loss on MLP activations; stack on a PEFT method")
register_method("point_peft", PointPEFT, lazy("peftkit.methods.point_peft.apply", "apply_point_peft"),
                "Point-PEFT (arXiv 2310.03059): point-prior prompts from a P2-Bank + geometry-aware adapters")
register_method("adapter", Adapter, lazy("peftkit.methods.adapter.apply", "apply_adapter"),
                "bottleneck adapters: Houlsby (serial x2), Pfeiffer (after FFN), parallel (He et al.)")
register_method("lora", LoRA, lazy("peftkit.methods.hf_peft.apply", "apply_lora"),
                "LoRA (arXiv 2106.09685) through HF peft, on spec roles")
register_method("dora", DoRA, lazy("peftkit.methods.hf_peft.apply", "apply_dora"),
                "DoRA (arXiv 2402.09353): LoRA on direction + trained magnitude, through HF peft")
register_method("qlora", QLoRA, lazy("peftkit.methods.hf_peft.qlora", "apply_qlora"),
                "QLoRA (arXiv 2305.14314): LoRA on a 4-bit NF4 base (bitsandbytes or torchao, CPU ok)")
register_method("ia3", IA3, lazy("peftkit.methods.hf_peft.apply", "apply_ia3"),
                "IA3 (arXiv 2205.05638): learned rescaling of keys, values and FFN, through HF peft")
register_method("prompt", PromptTuning, lazy("peftkit.methods.hf_peft.prompt", "apply_prompt"),
                "prompt tuning (arXiv 2104.08691) through HF peft; HF backbones only")
register_method("prefix", PrefixTuning, lazy("peftkit.methods.hf_peft.prompt", "apply_prefix"),
                "prefix tuning (arXiv 2101.00190) through HF peft; HF backbones only")
register_method("meft", MEFT, lazy("peftkit.methods.meft.apply", "apply_meft"),
                "MEFT (reversible, arXiv 2306.00477): two-stream reversible PLM + adapters; O(1) activations")
register_method("sparsify", Sparsify, lazy("peftkit.methods.deft.sparsify", "apply_sparsify"),
                "calibrated activation sparsity (CATS/TEAL): per-layer MLP thresholds; use pk.sparsify(...)")
