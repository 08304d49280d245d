"""Helpers shared by the comparisons against timm."""

import numpy as np
import torch


def timm_logits(tm: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    """Eval-mode logits of a timm model for NHWC numpy images."""
    with torch.no_grad():
        return tm(
            torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2))))
        ).numpy()


def randomize_batch_norms(tm: torch.nn.Module) -> None:
    """Non-trivial BN parameters and statistics, so that running stats are really imported."""
    with torch.no_grad():
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
