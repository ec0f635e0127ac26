"""Video Swin attention whose relative-position bias lookup sums its gradients in a fixed order.

torchvision's ``ShiftedWindowAttention3d`` reads the bias table as ``table[index]``. Every relative offset occurs
many times in a window, and the backward of such a read adds the repeated rows in a thread-dependent order on CPU, so
two runs of the same training drift apart. ``index_select`` gives the same values and sums in a fixed order. The
parameters and state-dict keys are torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d, SwinTransformerBlock


class FixedOrderWindowAttention3d(ShiftedWindowAttention3d):
    def get_relative_position_bias(self, window_size: list[int]) -> torch.Tensor:
        vol = window_size[0] * window_size[1] * window_size[2]
        index = self.relative_position_index[:vol, :vol].reshape(-1)  # (vol²,) rows of the table
        bias = self.relative_position_bias_table.index_select(0, index).view(vol, vol, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)  # (1, heads, vol, vol)


def fixed_order_swin_block(*args, **kwargs) -> nn.Module:
    """``SwinTransformerBlock`` with :class:`FixedOrderWindowAttention3d` (``SwinTransformer3d`` passes its own
    ``attn_layer``, which this replaces)."""
    return SwinTransformerBlock(*args, **{**kwargs, "attn_layer": FixedOrderWindowAttention3d})
