"""Headline measurements that need data, computed right after training (the cache only has weights).

``gamma_clamp`` (Frankle et al. 2021, figure 6): test accuracy with every BatchNorm gamma whose
|gamma| < threshold set to 0, minus the accuracy of the unmodified network (in percentage points).

``dead_relu`` (Frankle et al. 2021, figure 7): for every ReLU module and every channel, the probability
over test images and pixels that the output is exactly 0; a channel is "disabled" when that
probability is > 0.99. Reported per ReLU layer (share of its channels disabled) and over all channels.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Evaluate = Callable[[nn.Module], float]  # test accuracy in %


def gamma_clamp(model: nn.Module, evaluate: Evaluate, base: float | None = None, thresholds=(0.01,)) -> dict:
    """``evaluate(model)`` returns the test accuracy in %; ``base``: the unmodified accuracy if known."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    base = evaluate(model) if base is None else base
    out = {"accuracy": base, "thresholds": {}}
    total = sum(m.weight.numel() for m in bns)
    for t in thresholds:
        saved = [m.weight.detach().clone() for m in bns]
        try:
            n = 0
            with torch.no_grad():
                for m in bns:
                    mask = m.weight.abs() < t
                    n += int(mask.sum())
                    m.weight[mask] = 0.0
            acc = evaluate(model)
        finally:
            with torch.no_grad():
                for m, w in zip(bns, saved, strict=True):
                    m.weight.copy_(w)
        out["thresholds"][str(t)] = {"clamped": n, "fraction_clamped": n / total if total else 0.0,
                                     "accuracy": acc, "change": acc - base}
    first = out["thresholds"][str(thresholds[0])]
    out.update(threshold=thresholds[0], accuracy_clamped=first["accuracy"], change=first["change"],
               fraction_clamped=first["fraction_clamped"])
    return out


def dead_relu(model: nn.Module, evaluate: Evaluate, base: float | None = None, p: float = 0.99) -> dict:
    """Runs ``evaluate`` once with hooks on every nn.ReLU; the result has its ``accuracy`` too."""
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(name):
        def hook(_m, _inp, out):
            z = (out == 0).transpose(0, 1).reshape(out.shape[1], -1)  # (C, B*H*W)
            zeros[name] = zeros.get(name, 0) + z.sum(1).double().cpu()
            counts[name] = counts.get(name, 0) + z.shape[1]
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in relus.items()]
    try:
        acc = evaluate(model)
    finally:
        for h in handles:
            h.remove()
    layers = {}
    total = disabled = 0
    for name in relus:
        if name not in zeros:
            continue
        prob = zeros[name] / counts[name]
        k = int((prob > p).sum())
        layers[name] = {"channels": int(prob.numel()), "disabled": k, "fraction": k / prob.numel(),
                        "mean_zero_probability": float(prob.mean())}
        total += prob.numel()
        disabled += k
    return {"p": p, "accuracy": acc, "fraction": disabled / total if total else 0.0, "disabled": disabled, "channels": total,
            "layers": layers}


#: name -> fn(model, evaluate, base accuracy or None) -> dict; dead_relu first (its pass gives the accuracy)
MEASUREMENTS: dict[str, Callable[..., dict]] = {
    "dead_relu": dead_relu,
    "gamma_clamp": gamma_clamp,
}
