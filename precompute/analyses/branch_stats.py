"""Do the branches of a split layer differ? Statistics for "Branch Specialization" (Voss et al., 2021) that a
grey dataset can answer too.

- :func:`kernel_frequency`: the spatial frequency and orientation of filters that read the image, from the
  power spectrum of each kernel (the article's second SVD factor is frequency; with four branches it saw a
  high-, a mid- and a low-frequency branch).
- :func:`branch_test`: how much of a per-neuron quantity the branch explains (eta squared: the share of its
  variance between the branches' means), and a permutation test of that share against branch labels
  shuffled over the neurons. Several columns at once (e.g. a neuron's coordinates on the leading singular
  vectors) are judged by their largest eta squared, and the shuffles take the largest too, so picking the
  best column is paid for in the p value.

Shuffles come from a fixed seed: the same weights give the same p value on every machine.
"""

from __future__ import annotations

import torch

from ..declarations.limits import BRANCH_PERMUTATIONS as PERMUTATIONS
#: shuffles per batch (a batch holds _BATCH x neurons x columns float64 values)
_BATCH = 100


def kernel_frequency(weight: torch.Tensor, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequency and orientation of each filter of a conv that reads the image.

    weight: (N, C, kh, kw). The power spectrum |DFT|^2 of each kernel zero-padded to ``size`` x ``size``
    (default max(16, 4 * kernel size), fine enough to tell a 3x3 blob from a 3x3 edge), summed over the C
    input channels. Returns, each (N,):

    - frequency: the power-weighted mean radial frequency, in cycles per pixel (with the default size: 0.18
      for a flat 3x3 blob, 0.29 for a 3x3 edge, 0.56 for a 3x3 checkerboard; at most 0.5 * sqrt(2));
    - orientation: (Px - Py) / (Px + Py) with Px, Py the power-weighted mean squared frequency along x and
      y, in [-1, 1]: positive for a kernel that varies along x (vertical edges and stripes; +0.49 for a
      3x3 one), negative along y (horizontal ones), 0 isotropic. Both are 0 for an all-zero kernel.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a conv weight (N, C, kh, kw); got shape {tuple(weight.shape)}")
    n = size or max(16, 4 * max(weight.shape[2:]))
    power = torch.fft.fft2(weight.double(), s=(n, n)).abs().pow(2).sum(1)  # (N, n, n)
    f = torch.fft.fftfreq(n, dtype=torch.float64, device=weight.device)
    fy, fx = f[:, None].expand(n, n), f[None, :].expand(n, n)
    total = power.sum((1, 2))
    safe = total.clamp_min(1e-300)
    frequency = (power * (fx ** 2 + fy ** 2).sqrt()).sum((1, 2)) / safe
    px, py = (power * fx ** 2).sum((1, 2)), (power * fy ** 2).sum((1, 2))
    orientation = (px - py) / (px + py).clamp_min(1e-300)
    zero = total <= 0
    return frequency.masked_fill(zero, 0.0), orientation.masked_fill(zero, 0.0)


def eta_squared(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of each column's variance that lies between the groups' means.

    x: (n, d) values of n neurons; labels: (n,) integer group of each neuron, 0..G-1.
    Returns (d,) in [0, 1]; 0 for a constant column. Chance level for G groups is about (G - 1) / (n - 1).
    """
    return _eta_squared(x.double(), labels[None])[0]


def _eta_squared(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """x (n, d) float64, labels (B, n) -> (B, d): eta squared of x under each of B labellings."""
    xc = x - x.mean(0, keepdim=True)
    total = xc.pow(2).sum(0)  # (d,)
    B, n = labels.shape
    groups = int(labels.max()) + 1
    sums = torch.zeros(B, groups, x.shape[1], dtype=x.dtype, device=x.device)
    sums.scatter_add_(1, labels[:, :, None].expand(B, n, x.shape[1]), xc[None].expand(B, n, x.shape[1]))
    counts = torch.zeros(B, groups, dtype=x.dtype, device=x.device).scatter_add_(
        1, labels, torch.ones(B, n, dtype=x.dtype, device=x.device))
    between = (sums.pow(2) / counts.clamp_min(1)[:, :, None]).sum(1)  # (B, d)
    return torch.where(total > 0, between / total.clamp_min(1e-300), torch.zeros_like(between))


def branch_test(x: torch.Tensor, labels: torch.Tensor, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Does the branch explain x? eta squared per column and a permutation test of the largest.

    x: (n,) or (n, d) per-neuron values; labels: (n,) branch of each neuron (0..G-1, every branch present).
    Returns {"eta2": [d], "best": column of the largest, "eta2_best", "p": (1 + shuffles at least as large)
    / (1 + permutations), "permutations", "chance": (G - 1) / (n - 1), "means": per branch [G][d]}.
    """
    x = x.double().reshape(x.shape[0], -1)
    labels = labels.long().cpu()
    x = x.cpu()
    n = x.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"{n} neurons but {tuple(labels.shape)} labels")
    groups = int(labels.max()) + 1 if n else 0
    if groups < 2 or n <= groups:
        raise ValueError(f"a branch test needs at least 2 branches and more neurons than branches; got "
                         f"{groups} branches over {n} neurons")
    eta = eta_squared(x, labels)
    best = int(eta.argmax())
    observed = float(eta[best])
    gen = torch.Generator().manual_seed(seed)
    at_least = 0
    for start in range(0, permutations, _BATCH):
        b = min(_BATCH, permutations - start)
        shuffled = labels[torch.argsort(torch.rand(b, n, generator=gen), dim=1)]
        # a tiny tolerance: a shuffle that reproduces the observed labelling must count as "as large"
        at_least += int((_eta_squared(x, shuffled).max(1).values >= observed - 1e-12).sum())
    means = [x[labels == g].mean(0).tolist() for g in range(groups)]
    return {"eta2": eta.tolist(), "best": best, "eta2_best": observed,
            "p": (1 + at_least) / (1 + permutations), "permutations": permutations,
            "chance": (groups - 1) / (n - 1), "means": means}
