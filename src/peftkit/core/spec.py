"""BackboneSpec: the one place that knows a backbone's module names.

Methods target *roles* (``mlp_act``, ``attn_q``, ``blocks``) and never raw module names, so
DEFT, MEFT, LoRA and the adapters run unchanged on BERT, Llama, T5 and the point transformer.

Roles inside a block (paths relative to one block):
    attn            the whole attention sub-block (self-attention incl. its output projection)
    attn_q/k/v      query / key / value projections (nn.Linear)
    attn_qkv        a fused qkv projection (point transformer, GPT-2's c_attn); a method that asks for
                    attn_q / attn_k / attn_v on such a backbone adapts it (``BackboneSpec.target_role``)
    attn_out        attention output projection
    attn_norm       the norm applied around attention (pre-LN: before; post-LN: after the residual)
    mlp             the whole feed-forward sub-block
    mlp_in          first FFN projection (Llama: the up projection); mlp_gate for gated FFNs
    mlp_act         the activation module of the FFN (DEFT observes its output)
    mlp_out         last FFN projection
    mlp_norm        the norm around the FFN
Model-level roles (paths from the model root): embeddings, final_norm, and family-specific ones
(rotary for Llama; pos_embed and the parameters cls_token / cls_pos for the point transformer). The task head
is ``BackboneSpec.head``.

A model without an attached spec is described by the first registered spec resolver that recognises it
(:func:`register_spec_resolver`; the transformers backbone registers one that reads ``config.model_type``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from peftkit.core.discovery import discover
from peftkit.core.errors import UnsupportedError


@dataclass(frozen=True)
class StackSpec:
    """One stack of identical transformer blocks (an encoder, or a decoder).

    Attributes:
        name: ``"encoder"`` / ``"decoder"``.
        blocks: path from the model root to the nn.ModuleList of blocks.
        roles: role -> path inside one block (besides the roles above, ``drop_path``: the stochastic-depth
            module a pre-LN block applies to each residual branch, where it has one).
        input_adds: names of block arguments the block adds to its hidden state on entry, before its
            first norm (the point transformer's ``pos``: ``h = x + pos``); methods that re-run a block's
            sub-modules themselves (MEFT) add them too.
        returns_tuple: the block returns ``(hidden_states, ...)`` rather than the tensor (MPNet).
    """

    name: str
    blocks: str
    roles: Mapping[str, str]
    input_adds: tuple[str, ...] = ()
    returns_tuple: bool = False


@dataclass(frozen=True)
class BackboneSpec:
    """Roles -> module paths for one backbone family.

    Attributes:
        family: family id, e.g. ``"bert"``, ``"llama"``, ``"t5"``, ``"point_mae"``.
        stacks: the block stacks; T5 has an encoder and a decoder stack kept apart.
        head: paths of the task-head modules (trained, counted as "head").
        model_roles: model-level roles, e.g. ``{"embeddings": ..., "final_norm": ...}``.
        layout: ``"post_ln"`` (BERT) or ``"pre_ln"`` (Llama, point transformer); MEFT needs it.
    """

    family: str
    stacks: tuple[StackSpec, ...]
    head: tuple[str, ...] = ()
    model_roles: Mapping[str, str] = field(default_factory=dict)
    layout: str = "post_ln"

    def stack(self, name: str | None = None) -> StackSpec:
        """The stack called ``name`` (default: the first)."""
        if name is None:
            return self.stacks[0]
        for s in self.stacks:
            if s.name == name:
                return s
        raise UnsupportedError(
            f"backbone family '{self.family}' has no stack '{name}'; it has {[s.name for s in self.stacks]}"
        )

    def block_paths(self, model: nn.Module, stack: str | None = None) -> list[str]:
        """Paths of every block of one stack, or of all stacks when ``stack`` is None."""
        stacks = self.stacks if stack is None else (self.stack(stack),)
        paths: list[str] = []
        for s in stacks:
            blocks = model.get_submodule(s.blocks)
            paths.extend(f"{s.blocks}.{i}" for i in range(len(blocks)))
        return paths

    def has_role(self, role: str, stack: str | None = None) -> bool:
        stacks = self.stacks if stack is None else (self.stack(stack),)
        return any(role in s.roles for s in stacks)

    def target_role(self, role: str) -> str:
        """The role a method that adapts a projection should use for ``role``: the role itself, or the fused
        projection that holds it (``attn_q`` -> ``attn_qkv`` on a backbone with a fused qkv layer), so the
        same method defaults work on every family. Unknown roles come back unchanged."""
        if not self.has_role(role) and role in FUSED_ROLES and self.has_role(FUSED_ROLES[role]):
            return FUSED_ROLES[role]
        return role

    def role_paths(self, model: nn.Module, role: str, stack: str | None = None) -> list[str]:
        """Concrete module paths of ``role`` in every block (of one stack, or of all stacks).

        Raises:
            UnsupportedError: if no stack of this backbone defines the role.
        """
        stacks = self.stacks if stack is None else (self.stack(stack),)
        found = [s for s in stacks if role in s.roles]
        if not found:
            have = sorted({r for s in stacks for r in s.roles})
            raise UnsupportedError(
                f"backbone family '{self.family}' has no role '{role}'; its roles are {have}"
            )
        paths: list[str] = []
        for s in found:
            n = len(model.get_submodule(s.blocks))
            paths.extend(f"{s.blocks}.{i}.{s.roles[role]}" for i in range(n))
        return paths

    def model_role(self, role: str) -> str:
        if role not in self.model_roles:
            raise UnsupportedError(
                f"backbone family '{self.family}' has no model role '{role}'; "
                f"it has {sorted(self.model_roles)}"
            )
        return self.model_roles[role]


# roles that some families compute inside one fused projection
FUSED_ROLES = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv"}

SPEC_ATTR = "peftkit_spec"
BACKBONE_ID_ATTR = "peftkit_backbone_id"

# A resolver returns the spec of a model it recognises (e.g. by a transformers ``config.model_type``),
# else None.
SpecResolver = Callable[[nn.Module], "BackboneSpec | None"]
_RESOLVERS: list[SpecResolver] = []


def register_spec_resolver(resolver: SpecResolver) -> SpecResolver:
    """Register a function that infers the spec of models without one; backbones call this at import.

    Resolvers are tried in registration order by :func:`get_spec`; the first non-None answer wins. A resolver
    that recognises a model but cannot describe it raises ``UnsupportedError`` with what it does support.
    """
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)
    return resolver


def attach_spec(model: nn.Module, spec: BackboneSpec, backbone_id: str | None = None) -> nn.Module:
    """Record ``spec`` on ``model`` so ``pk.apply`` finds it without being told.

    Args:
        model: the backbone.
        spec: its roles.
        backbone_id: the registered backbone name the model was built as (what adapter checkpoints are tied
            to); backbone builders pass it, ``None`` keeps the model's current id.
    """
    object.__setattr__(model, SPEC_ATTR, spec)
    if backbone_id is not None:
        object.__setattr__(model, BACKBONE_ID_ATTR, backbone_id)
    return model


def get_spec(model: nn.Module) -> BackboneSpec:
    """The BackboneSpec of ``model``: the attached one, else the first registered resolver's answer."""
    spec = getattr(model, SPEC_ATTR, None)
    if spec is not None:
        return spec
    discover()  # the backbones register their resolvers when imported
    for resolver in _RESOLVERS:
        spec = resolver(model)
        if spec is not None:
            attach_spec(model, spec)
            return spec
    raise UnsupportedError(
        f"{type(model).__name__} has no BackboneSpec: build it with pk.load_backbone(...), or call "
        "pk.attach_spec(model, BackboneSpec(...)) to describe its blocks and roles"
    )
