"""DEFT as a method: the loss of a real forward against a hand computation, masks, stacking, undo, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.errors import ConfigError, PeftkitError, UnsupportedError
from peftkit.core.protocols import RecomputableTerm
from peftkit.core.spec import BackboneSpec, StackSpec
from peftkit.core.surgery import set_module
from peftkit.methods.deft.apply import deft_loss_module, deft_probes
from peftkit.methods.deft.density import per_sample_density
from peftkit.methods.deft.loss import DensityNaNError
from peftkit.methods.deft.probe import DensityProbe

EPS = 1e-7


def _batch(b: int = 2, t: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": torch.randint(5, 1000, (b, t), generator=g), "attention_mask": mask}


def _tiny_bert() -> nn.Module:
    return pk.load_backbone("tiny_bert", task="classification", num_labels=3)


def _act_modules(model: nn.Module, stack: str | None = None) -> list[nn.Module]:
    spec = pk.get_spec(model)
    return [model.get_submodule(p) for p in spec.role_paths(model, "mlp_act", stack=stack)]


class _Recorder:
    """Test-side hooks on the activation modules: the float64 activations of the last forward."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.acts: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def hook(mod, inp, out):
            self.acts[i] = out.detach().double()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _hand_mean(acts: list[torch.Tensor], valid: list[list[bool]] | None = None, skip: int = 0) -> float:
    """mean over (b, l) of mean over valid (t, j) of a^2/(a^2+eps); ``skip`` leading positions left out."""
    total, n = 0.0, 0
    for a in acts:
        for b, sample in enumerate(a.tolist()):
            num, cnt = 0.0, 0
            for t, row in enumerate(sample):
                if t < skip or (valid is not None and not valid[b][t - skip]):
                    continue
                for v in row:
                    num += v * v / (v * v + EPS)
                    cnt += 1
            total += num / cnt
            n += 1
    return total / n


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_roberta", "tiny_llama"])
def test_output_unchanged_and_loss_equals_hand_computation(backbone):
    model = pk.load_backbone(backbone, task="classification", num_labels=3)
    batch = _batch()
    rec = _Recorder(_act_modules(model))
    ref = model(**batch).logits
    model = pk.apply(model, [pk.FullFineTune(), pk.DEFT(weight=0.7)])
    out = model(**batch).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    loss = pk.aux_loss(model)
    assert loss.requires_grad
    assert loss.item() == pytest.approx(0.7 * _hand_mean(rec.acts), rel=1e-5)
    rec.remove()


def test_t5_encoder_and_decoder_terms_apart_with_their_own_weights():
    model = pk.load_backbone("tiny_t5")
    enc, dec = _Recorder(_act_modules(model, "encoder")), _Recorder(_act_modules(model, "decoder"))
    batch = {**_batch(), "labels": torch.tensor([[3, 4, 7, -100], [5, 9, -100, -100]])}
    model = pk.apply(model, [pk.FullFineTune(), pk.DEFT(weight=0.5, decoder_weight=2.0)])
    model(**batch)
    terms = deft_loss_module(model).stack_terms()
    assert terms["encoder"].item() == pytest.approx(_hand_mean(enc.acts), rel=1e-5)
    assert terms["decoder"].item() == pytest.approx(_hand_mean(dec.acts), rel=1e-5)
    expect = 0.5 * _hand_mean(enc.acts) + 2.0 * _hand_mean(dec.acts)
    assert pk.aux_loss(model).item() == pytest.approx(expect, rel=1e-5)
    # padding excluded: encoder by attention_mask, decoder by labels != -100
    pk.remove(model)
    model = pk.apply(model, [pk.FullFineTune(), pk.DEFT(exclude_padding=True)])
    model(**batch)
    enc_valid = batch["attention_mask"].bool().tolist()
    dec_valid = (batch["labels"] != -100).tolist()
    terms = deft_loss_module(model).stack_terms()
    assert terms["encoder"].item() == pytest.approx(_hand_mean(enc.acts, enc_valid), rel=1e-5)
    assert terms["decoder"].item() == pytest.approx(_hand_mean(dec.acts, dec_valid), rel=1e-5)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
def test_exclude_padding_uses_the_attention_mask(backbone):
    model = pk.load_backbone(backbone, task="classification", num_labels=3)
    rec = _Recorder(_act_modules(model))
    batch = _batch()
    model = pk.apply(model, [pk.LoRA(), pk.DEFT(exclude_padding=True)])
    model(**batch)
    valid = batch["attention_mask"].bool().tolist()
    masked, unmasked = _hand_mean(rec.acts, valid), _hand_mean(rec.acts)
    assert abs(masked - unmasked) > 5e-6  # the test can tell them apart
    assert pk.aux_loss(model).item() == pytest.approx(masked, rel=1e-6)
    # positional attention mask is found too
    model(batch["input_ids"], batch["attention_mask"])
    assert pk.aux_loss(model).item() == pytest.approx(_hand_mean(rec.acts, valid), rel=1e-5)


def test_prompt_tuning_virtual_tokens_counted_or_excluded():
    base = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    rec = _Recorder(_act_modules(base))
    batch = _batch()
    valid = batch["attention_mask"].bool().tolist()
    model = pk.apply(base, [pk.PromptTuning(num_virtual_tokens=3), pk.DEFT(exclude_virtual_tokens=True,
                                                                           exclude_padding=True)])
    model(**batch)
    assert rec.acts[0].shape[1] == 3 + 7  # virtual tokens pass through the MLP
    assert pk.aux_loss(model).item() == pytest.approx(_hand_mean(rec.acts, valid, skip=3), rel=1e-5)
    pk.remove(model)
    model = pk.apply(base, [pk.PromptTuning(num_virtual_tokens=3), pk.DEFT()])  # reference: all counted
    model(**batch)
    assert pk.aux_loss(model).item() == pytest.approx(_hand_mean(rec.acts), rel=1e-5)


def test_prefix_tuning_mask_is_trimmed_to_the_real_tokens():
    base = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    rec = _Recorder(_act_modules(base))
    batch = _batch()
    model = pk.apply(base, [pk.PrefixTuning(num_virtual_tokens=4), pk.DEFT(exclude_padding=True)])
    model(**batch)
    assert rec.acts[0].shape[1] == 7  # prefixes live in the key/value cache only
    valid = batch["attention_mask"].bool().tolist()
    assert pk.aux_loss(model).item() == pytest.approx(_hand_mean(rec.acts, valid), rel=1e-5)


@pytest.mark.parametrize("stack", [
    lambda: [pk.LoRA(), pk.DEFT()], lambda: [pk.DEFT(), pk.LoRA()], lambda: [pk.Adapter(), pk.DEFT()],
    lambda: [pk.PromptTuning(num_virtual_tokens=2), pk.DEFT()], lambda: [pk.PrefixTuning(), pk.DEFT()],
], ids=["lora+deft", "deft+lora", "adapter+deft", "prompt+deft", "prefix+deft"])
def test_density_gradient_reaches_the_method_parameters(stack):
    torch.manual_seed(0)
    model = pk.apply(pk.load_backbone("tiny_bert", task="classification", num_labels=3), stack())
    model.eval()
    model(**_batch())
    pk.aux_loss(model).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_optimising_the_density_term_lowers_it():
    # eps = 1e-2 so the surrogate's gradient reaches the random model's O(0.05) activations in a few steps
    # (with eps = 1e-7 it acts only on activations already below ~1e-3; see docs/methods/deft.md)
    torch.manual_seed(0)
    model = pk.apply(pk.load_backbone("tiny_bert", task="classification", num_labels=3),
                     [pk.FullFineTune(), pk.DEFT(eps=1e-2)])
    model.eval()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch()
    losses = []
    for _ in range(25):
        model(**batch)
        loss = pk.aux_loss(model)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]


def test_remove_restores_modules_hooks_and_outputs():
    model = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    originals = _act_modules(model)
    batch = _batch()
    ref = model(**batch).logits
    n_hooks = len(model._forward_pre_hooks)
    model = pk.apply(model, [pk.LoRA(), pk.DEFT(prune=0.5)])
    assert len(deft_probes(model)) == 2 and len(model._forward_pre_hooks) == n_hooks + 1
    assert not torch.allclose(model(**batch).logits, ref)  # pruned
    base = pk.remove(model)
    assert _act_modules(base) == originals
    assert len(base._forward_pre_hooks) == n_hooks and not hasattr(base, "peftkit_deft")
    assert not any(isinstance(m, DensityProbe) for m in base.modules())
    torch.testing.assert_close(base(**batch).logits, ref, rtol=0, atol=0)


def test_checkpoint_round_trip_with_deft_in_the_stack(tmp_path):
    torch.manual_seed(0)
    model = pk.apply(pk.load_backbone("tiny_bert", task="classification", num_labels=3),
                     [pk.Adapter(), pk.DEFT(weight=0.3, exclude_padding=True)])
    for p in model.parameters():
        if p.requires_grad:
            nn.init.normal_(p, std=0.05)
    model.eval()
    batch = _batch()
    out = model(**batch).logits
    aux = pk.aux_loss(model)
    pk.save_adapter(model, tmp_path / "run")
    fresh = pk.load_adapter(_tiny_bert(), tmp_path / "run")
    fresh.eval()
    torch.testing.assert_close(fresh(**batch).logits, out)
    torch.testing.assert_close(pk.aux_loss(fresh), aux)
    assert deft_probes(fresh)[0].coef == pytest.approx(0.3 / 2)


def test_probe_is_a_recomputable_term_whose_gradient_matches_the_formula():
    model = pk.apply(pk.load_backbone("tiny_bert", task="classification", num_labels=3),
                     [pk.FullFineTune(), pk.DEFT(weight=2.0, exclude_padding=True)])
    probes = deft_probes(model)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for p in probes:
        assert isinstance(p, RecomputableTerm)
        p.register_forward_hook(lambda m, i, out: seen.__setitem__(m.name, (out, m.valid(out))))
    model(**_batch())
    loss = pk.aux_loss(model)
    for p in probes:  # the layer's own share (the total also flows through the later layers)
        a, valid = seen[p.name]
        g = torch.autograd.grad(p.weighted_term(), a, retain_graph=True)[0]
        leaf = a.detach().requires_grad_()
        expect = torch.autograd.grad(p.coef * per_sample_density(leaf, p.eps, valid).mean(), leaf)[0]
        torch.testing.assert_close(expect, g)
        assert g.abs().sum() > 0
    assert sum(p.weighted_term() for p in probes).item() == pytest.approx(loss.item())


def test_deepcopy_keeps_probes_and_context_consistent():
    model = pk.apply(_tiny_bert(), [pk.LoRA(), pk.DEFT()])
    twin = copy.deepcopy(model)
    twin(**_batch(seed=1))
    with pytest.raises(PeftkitError, match="run a forward pass"):
        pk.aux_loss(model)  # the original saw no forward: the copy's hook did not write into it
    model(**_batch(seed=1))
    torch.testing.assert_close(pk.aux_loss(twin), pk.aux_loss(model))


def test_gradient_checkpointing_keeps_the_density_gradient():
    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model = pk.load_backbone("tiny_bert", task="classification", num_labels=3, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
        if checkpointing:
            model.gradient_checkpointing_enable()  # transformers 5: use_reentrant=False
        model = pk.apply(model, [pk.FullFineTune(), pk.DEFT()])
        model.train()
        model(**_batch())
        pk.aux_loss(model).backward()
        return [p.grad for p in model.parameters() if p.grad is not None]

    ref, got = grads(False), grads(True)
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"weight": -1.0}, "weight must be >= 0"), ({"eps": 0.0}, "eps must be > 0"), ({"eps": -1e-7}, "eps"),
    ({"decoder_weight": -0.1}, "decoder_weight"), ({"prune": 1.0}, "prune"), ({"weight": "abc"}, "number"),
    ({"eps": float("nan")}, "eps"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pk.DEFT(**kwargs)


def test_yaml_style_numeric_strings_are_accepted():
    from peftkit.core.configs import config_from_dict

    cfg = config_from_dict(pk.DEFT, {"eps": "1e-7", "weight": 1})
    assert cfg.eps == 1e-7 and isinstance(cfg.weight, float)
    with pytest.raises(ConfigError, match="valid keys"):
        config_from_dict(pk.DEFT, {"epsilon": 1e-7})


def test_backbone_without_mlp_act_role_is_refused():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.GELU())])

    model = pk.attach_spec(Tiny(), BackboneSpec("toy", (StackSpec("encoder", "blocks", {"mlp_in": "0"}),)))
    with pytest.raises(UnsupportedError, match="mlp_act"):
        pk.apply(model, [pk.FullFineTune(), pk.DEFT()])


def test_head_only_and_prune_with_full_are_refused():
    with pytest.raises(UnsupportedError, match="head_only"):
        pk.apply(_tiny_bert(), [pk.HeadOnly(), pk.DEFT()])
    with pytest.raises(ConfigError, match="prune"):
        pk.apply(pk.load_backbone("tiny_bert", task="classification", num_labels=3),
                 [pk.FullFineTune(), pk.DEFT(prune=0.5)])


def test_activation_replaced_by_an_earlier_method_is_refused():
    model = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    del model.bert.encoder.layer[1].intermediate.intermediate_act_fn
    with pytest.raises(UnsupportedError, match="cannot reach"):
        pk.apply(model, [pk.LoRA(), pk.DEFT()])


def test_aux_loss_before_forward_and_bypassed_probe_are_errors():
    model = pk.apply(_tiny_bert(), [pk.LoRA(), pk.DEFT()])
    with pytest.raises(PeftkitError, match="run a forward pass"):
        pk.aux_loss(model)
    probe = deft_probes(model)[1]
    set_module(model, probe.name, probe.inner)  # something bypasses layer 1's probe
    model(**_batch())
    with pytest.raises(UnsupportedError, match=r"layer\.1\.intermediate"):
        pk.aux_loss(model)


def test_non_finite_density_term_names_the_layer():
    model = pk.apply(_tiny_bert(), [pk.LoRA(), pk.DEFT()])
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.bias.fill_(float("inf"))
    model(**_batch())
    with pytest.raises(DensityNaNError, match=r"'bert\.encoder\.layer\.1\.intermediate\.intermediate_act_fn"):
        pk.aux_loss(model)


@pytest.mark.slow  # importing and starting transformers.Trainer takes ~10 s on a busy 2-core machine
def test_hf_trainer_adds_the_density_term(tmp_path):
    from transformers import TrainingArguments

    from peftkit.train.hf_trainer import PeftkitTrainer

    model = pk.apply(_tiny_bert(), [pk.LoRA(), pk.DEFT(weight=1000.0)])
    batch = _batch(b=4)
    data = [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "labels": i % 3} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True)
    trainer = PeftkitTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "aux_loss" in h]
    assert len(logged) == 2
    assert all(900 < h["aux_loss"] < 1000 and h["loss"] > h["aux_loss"] for h in logged)
