"""The pretraining loss curve as a small PNG (per-step loss and its per-epoch mean, log scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peftkit.core.io import atomic_write


def plot_loss_curve(steps: list[int], losses: list[float], path: Path, per_epoch: int) -> None:
    """Write ``path`` (PNG, atomically): faint per-step loss and the bold per-epoch mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, losses, lw=0.5, alpha=0.35, color="tab:blue", label="step")
    k = max(1, per_epoch)
    if len(losses) >= k:
        starts = range(0, len(losses) - k + 1, k)
        means = [float(np.mean(losses[i : i + k])) for i in starts]
        ends = [steps[min(i + k - 1, len(steps) - 1)] for i in starts]
        ax.plot(ends, means, color="tab:blue", lw=1.8, label="epoch mean")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("Chamfer-L2 (masked patches)")
    ax.set_title("Point-MAE pretraining loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
