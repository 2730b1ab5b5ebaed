"""BackboneSpec of the Point-MAE transformer: role -> module path (one encoder stack, pre-LN)."""

from __future__ import annotations

from torch import nn

from peftkit.core.spec import BackboneSpec, StackSpec, attach_spec

POINT_MAE_ROLES = {
    "attn": "attn",
    "attn_qkv": "attn.qkv",
    "attn_out": "attn.proj",
    "attn_norm": "norm1",
    "mlp": "mlp",
    "mlp_in": "mlp.fc1",
    "mlp_act": "mlp.act",
    "mlp_out": "mlp.fc2",
    "mlp_norm": "norm2",
    "drop_path": "drop_path",  # DropPath on both residual branches
}

POINT_MAE_SPEC = BackboneSpec(
    family="point_mae",
    stacks=(StackSpec("encoder", "blocks", POINT_MAE_ROLES, input_adds=("pos",)),),  # h = x + pos
    head=("cls_head",),
    model_roles={
        "embeddings": "patch_embed",
        "pos_embed": "pos_embed",
        "final_norm": "norm",
        "cls_token": "cls_token",  # an nn.Parameter, not a module
        "cls_pos": "cls_pos",  # an nn.Parameter, not a module
    },
    layout="pre_ln",
)


def finish_point_model(model: nn.Module, backbone_id: str) -> nn.Module:
    """Attach the spec and the backbone id (what adapter checkpoints are tied to)."""
    return attach_spec(model, POINT_MAE_SPEC, backbone_id)
