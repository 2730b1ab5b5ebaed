"""Point-MAE masked autoencoding around our PointTransformer encoder.

Pang et al., "Masked Autoencoders for Point Cloud Self-supervised Learning", ECCV 2022, arXiv 2203.06604,
Sec. 3.2-3.4:

    patches N_i, centres c_i = FPS + kNN(points);  mask M of round(m * g) random patches, m = 0.6
    x_v   = Encoder(PointNet(N_v) ; pos = MLP_e(c_v))                 visible tokens only (no cls token)
    h     = Decoder([x_v ; t_mask * |M|] ; pos = MLP_d([c_v ; c_M]))   4 blocks, own positional MLP
    P_M   = Linear(LN(h_M)) reshaped to k points per masked patch     ("increase_dim", Conv1d(d, 3k))
    loss  = Chamfer-L2(P_M, N_M)                                     (mean d1 + mean d2 over masked patches)

The encoder is a :class:`PointTransformer` whose ``cls_token``/``cls_pos``/``cls_head`` are unused here, so
its
state dict loads straight into the classification model. Difference from the reference code: the patch
embedding runs on the visible patches only (the reference embeds all patches and then drops the masked ones;
the only effect is which patches the BatchNorm statistics see) which saves 60% of its cost on CPU.

Shapes: b batch, g groups, v visible, M masked, k neighbours, d dim.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.backbones.point.convert import CLASSIFIER_ONLY
from peftkit.backbones.point.model import Block, PointTransformer, init_weights
from peftkit.core.errors import ConfigError
from peftkit.ops.points import chamfer_l2

MASK_RATIO = 0.6  # paper, cfgs/pretrain.yaml transformer_config.mask_ratio
DECODER_DEPTH = 4  # paper, decoder_depth
DECODER_DROP_PATH = 0.1  # paper, drop_path_rate (shared by the decoder)


class PointMAE(nn.Module):
    """Encoder + decoder for masked point modelling.

    Args:
        encoder: the transformer to pretrain.
        mask_ratio: share of patches masked (paper 0.6).
        decoder_depth: decoder blocks (paper 4).
        decoder_heads: decoder heads (paper 6 at d=384; default: the encoder's).
        drop_path: decoder stochastic depth, linear from 0 (paper 0.1).
    """

    def __init__(
        self,
        encoder: PointTransformer,
        mask_ratio: float = MASK_RATIO,
        decoder_depth: int = DECODER_DEPTH,
        decoder_heads: int | None = None,
        drop_path: float = DECODER_DROP_PATH,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        d = encoder.dim
        heads = decoder_heads or encoder.blocks[0].attn.heads
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        rates = [drop_path * i / max(1, decoder_depth - 1) for i in range(decoder_depth)]
        self.decoder_blocks = nn.ModuleList(Block(d, heads, drop_path=r) for r in rates)
        self.decoder_norm = nn.LayerNorm(d)
        self.increase_dim = nn.Conv1d(d, 3 * encoder.group_size, 1)
        for m in (self.decoder_pos_embed, self.decoder_blocks, self.decoder_norm, self.increase_dim):
            m.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def random_mask(
        self, b: int, g: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(visible ``[b, v]``, masked ``[b, M]``) patch indices, a fresh random permutation per cloud."""
        num_mask = int(round(self.mask_ratio * g))
        order = torch.rand(b, g, generator=generator).argsort(dim=1)  # [b, g]
        return order[:, num_mask:], order[:, :num_mask]

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Chamfer-L2 reconstruction loss of the masked patches of clouds ``[b, n, 3]`` (a scalar)."""
        enc = self.encoder
        geom = enc.group_divider(points)
        b, g, k, _ = geom.neighborhood.shape
        vis_idx, mask_idx = (t.to(points.device) for t in self.random_mask(b, g, generator))
        vis, masked = geom.select(vis_idx), geom.select(mask_idx)
        x = enc.patch_embed(vis.neighborhood)  # [b, v, d]
        pos = enc.pos_embed(vis.centers)  # [b, v, d]
        for blk in enc.blocks:
            x = blk(x, pos, vis)
        x = enc.norm(x)
        n_mask = mask_idx.shape[1]
        h = torch.cat([x, self.mask_token.expand(b, n_mask, -1)], dim=1)  # [b, v + M, d]
        dpos = self.decoder_pos_embed(torch.cat([vis.centers, masked.centers], dim=1))  # [b, v + M, d]
        for blk in self.decoder_blocks:
            h = blk(h, dpos, None)
        h = self.decoder_norm(h[:, -n_mask:])  # [b, M, d]
        pred = self.increase_dim(h.transpose(1, 2)).transpose(1, 2)  # [b, M, 3k]
        pred = pred.reshape(b * n_mask, k, 3)  # [b*M, k, 3]
        target = masked.neighborhood.reshape(b * n_mask, k, 3)  # [b*M, k, 3]
        return chamfer_l2(pred, target)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's pretrained weights (without the classifier-only parameters)."""
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith(CLASSIFIER_ONLY)}
