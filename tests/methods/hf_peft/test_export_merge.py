"""Export with parameter-free methods, and ``pk.merge`` checked against the unmerged outputs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.labels import set_label_names
from peftkit.core.state import get_state


def _perturb(model: nn.Module, scale: float = 0.1) -> None:
    """Move every trainable tensor away from its init (LoRA's B starts at zero: a merge of it is trivial)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def test_lora_trained_with_deft_exports_to_peft_and_records_deft(tiny: Any, tmp_path: Any) -> None:
    from peft import PeftModel

    base = tiny.build("tiny_bert")
    set_label_names(base, ["sport", "tech", "politics"])
    model = pk.apply(base, [pk.LoRA(rank=4), pk.DEFT()])
    _perturb(model)
    with torch.no_grad():
        ours = tiny.output(model, "tiny_bert")
    out = pk.export_peft(model, tmp_path / "hf")
    record = json.loads((out / "peftkit_stack.json").read_text())
    assert record["exported"] == "lora" and record["parameter_free"] == ["deft"]
    assert [m["name"] for m in record["stack"]] == ["lora", "deft"]
    assert record["id2label"] == {"0": "sport", "1": "tech", "2": "politics"}
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["peftkit_stack"]) == record
    # DEFT only adds a loss term: peft's LoRA on a fresh base gives the same outputs
    loaded = PeftModel.from_pretrained(tiny.build("tiny_bert"), str(out))
    torch.testing.assert_close(tiny.output(loaded, "tiny_bert"), ours, rtol=0, atol=1e-6)


MERGEABLE = [
    ("lora", lambda: pk.LoRA(rank=4, targets=["attn_q", "attn_v", "mlp_out"])),
    ("dora", lambda: pk.DoRA(rank=2)),
    ("ia3", lambda: pk.IA3()),
    ("lora+deft", lambda: [pk.LoRA(rank=4), pk.DEFT()]),
    ("full", lambda: pk.FullFineTune()),
    ("head_only", lambda: pk.HeadOnly()),
]


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama", "tiny_gpt2"])   # GPT-2: W stored transposed
@pytest.mark.parametrize("mid, make", MERGEABLE, ids=[m[0] for m in MERGEABLE])
def test_merge_gives_the_unmerged_outputs_with_plain_modules(
    name: str, mid: str, make: Any, tiny: Any
) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    base_types = {n: type(m) for n, m in tiny.build(name).named_modules()}
    model = pk.apply(tiny.build(name), make())
    _perturb(model)
    unmerged = tiny.output(model, name)
    merged = pk.merge(model)
    assert get_state(merged) is None and "peft_config" not in merged.__dict__
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert {n: type(m) for n, m in merged.named_modules()} == base_types      # a plain model again
    assert all(p.requires_grad for p in merged.parameters())                  # as load_backbone gave it
    torch.testing.assert_close(tiny.output(merged, name), unmerged, rtol=1e-5, atol=1e-5)
    if mid not in ("full", "head_only"):
        assert not torch.equal(tiny.output(tiny.build(name), name), unmerged)   # the merge moved something


@pytest.mark.parametrize("make, blocked", [
    (lambda: pk.Adapter(), "adapter"),
    (lambda: [pk.LoRA(), pk.Adapter()], "adapter"),
    (lambda: pk.PromptTuning(num_virtual_tokens=2), "prompt"),
], ids=["adapter", "lora+adapter", "prompt"])
def test_merge_refuses_methods_without_an_exact_merge(make: Any, blocked: str, tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), make())
    before = tiny.output(model, "tiny_bert")
    with pytest.raises(pk.UnsupportedError, match=f"pk.merge: {blocked} has no exact merge"):
        pk.merge(model)
    assert get_state(model) is not None                                       # nothing was changed
    torch.testing.assert_close(tiny.output(model, "tiny_bert"), before, rtol=0, atol=0)


def test_merge_of_a_plain_model_is_a_config_error(tiny: Any) -> None:
    with pytest.raises(pk.ConfigError, match="nothing to merge"):
        pk.merge(tiny.build("tiny_bert"))
