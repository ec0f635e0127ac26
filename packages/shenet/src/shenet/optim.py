"""CLIP4Clip's optimiser semantics (spec §3.10): BertAdam and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

__all__ = ["BertAdam", "warmup_cosine", "param_groups"]


class BertAdam(Optimizer):
    """Adam without bias correction, decoupled weight decay and per-tensor gradient clipping (CLIP4Clip's BertAdam):

        g ← g · min(1, c / ‖g‖)  (per parameter tensor)
        m ← β1 m + (1 − β1) g      v ← β2 v + (1 − β2) g²
        p ← p − lr · ( m / (√v + ε) + wd · p )

    Args:
        params: parameters or groups (each may set lr, weight_decay).
        lr, betas, eps, weight_decay: as above (spec: 1e-4, (0.9, 0.98), 1e-6, 0.2).
        max_grad_norm: per-tensor clipping threshold c (spec: 1.0; ≤ 0 disables).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.2,
        max_grad_norm: float = 1.0,
    ):
        if lr < 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"BertAdam: invalid lr={lr}, betas={betas} or eps={eps}")
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
                if group["max_grad_norm"] > 0:
                    scale = (group["max_grad_norm"] / g.norm().clamp_min(1e-12)).clamp(max=1.0)
                    g = g * scale  # per-tensor clip (no host sync)
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = v.sqrt().add_(group["eps"])  # no bias correction
                if p.dtype == torch.float32:  # in place: p ← p − lr (m / denom + wd p)
                    if group["weight_decay"] > 0:
                        p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay
                    p.addcdiv_(m, denom, value=-group["lr"])
                else:
                    update = m / denom
                    if group["weight_decay"] > 0:
                        update = update + group["weight_decay"] * p.float()  # decoupled weight decay
                    p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore as :meth:`torch.optim.Optimizer.load_state_dict`, but keep the moments in float32: the base
        class casts every floating state tensor to its parameter's dtype, which for half-precision parameters
        (``precision: bf16-true`` / ``16-true``) would round the saved float32 moments and make a resumed run
        accumulate them in half precision from then on."""
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params, strict=True):
            for key in ("exp_avg", "exp_avg_sq"):
                if key in saved.get(i, {}):
                    self.state[p][key] = saved[i][key].to(device=p.device, dtype=torch.float32)


def warmup_cosine(step: int, total_steps: int, warmup: float = 0.1) -> float:
    """LR multiplier: ``x / warmup`` for progress ``x = step / total < warmup``, else ``0.5 (1 + cos(π x))``."""
    x = step / max(1, total_steps)
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


def param_groups(named_params, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
    """CLIP4Clip's four groups: CLIP parameters (``clip.`` prefix) at ``lr · coef_lr``, new ones at ``lr``; weight
    decay except for names containing ``bias`` or ``LayerNorm.`` (so CLIP's ``ln_*`` weights are decayed, as there)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        is_clip = name.startswith("clip.") or ".clip." in name
        decay = not ("bias" in name or "LayerNorm." in name)
        groups.setdefault((is_clip, decay), []).append(p)
    return [
        {"params": ps, "lr": lr * (coef_lr if is_clip else 1.0), "weight_decay": weight_decay if decay else 0.0}
        for (is_clip, decay), ps in sorted(groups.items())
    ]
