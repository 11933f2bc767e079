"""Which neurons of the feeding layer connect to which neurons of this one: SVD of |W| (Voss et al.,
"Branch Specialization").

For a conv layer (or a linear layer fed by a conv) with feeder ``row["feeds_from"]`` (N1 neurons).
Depthwise convs are left out: each of their neurons reads one channel, so M is a scaled
permutation-like matrix whose SVD only sorts the neurons by kernel norm.

- M (N2 x N1) = |W| summed over kernel positions. Grouped convs: the full block-diagonal matrix,
  zero where a neuron is not connected to a feeder neuron. A linear layer after a flatten
  [C, H, W]: |W| reshaped (N2, C, H*W) and summed over the positions.
- Uncentred SVD M = U S V^T, k = min(8, N1, N2) leading triplets (:func:`top_svd`; singular
  values below 1e-6 of the largest are reported as 0, with zero vectors). ``u`` (N2 x k) places this layer's
  neurons, ``v`` (N1 x k) the feeder's neurons: the raw singular vectors (unit-norm columns, not
  scaled by the singular values; multiply by ``singular_values`` for u*s). Sign convention: each
  column of ``u`` has a non-negative sum (the first vector of a non-negative M is then >= 0, the
  "overall strength" direction).
- Centred PCA: the columns of M centred over this layer's neurons (M - mean over rows), then the
  SVD of that: ``pca.u`` (N2 x k) are the principal directions in neuron space (unit columns),
  ``pca.v`` (N1 x k) the loadings of the feeder's neurons, ``explained_variance_ratio`` = s_i^2 / sum s^2.
- ``feeder_property`` colours the feeder's neurons: ``colourfulness`` when the feeder is a conv on
  3 input channels (RGB): mean over kernel positions of the std across the 3 channels, divided by
  the RMS of the filter, in [0, 1] (0 grey, 1 colour-opponent); otherwise ``branch`` when this layer
  or the feeder is a grouped (not depthwise) conv: the group index of each feeder neuron (the
  group of this layer that reads it, else the feeder's own group); otherwise (version 3) ``frequency``
  when the feeder reads the image (see ``feeder_properties``); otherwise ``norm``: the L2 norm
  of each feeder neuron's weights. An RGB feeder of a grouped layer also carries ``branch``
  beside its colourfulness (the article's question: does one branch take the colour filters?).
- ``feeder_properties`` ({name: values}, version 2) holds every colouring that applies, the default
  (``feeder_property``'s) first: ``colourfulness`` and ``branch`` as above where they apply, then
  (version 3) ``frequency`` and ``orientation`` when the feeder is a conv that reads the image
  (:func:`~.branch_stats.kernel_frequency`), and ``norm`` always, so a reader can let the user choose.
- ``branch_tests`` (version 3, where the feeder's neurons carry ``branch``): does the branch explain how
  the neurons differ (:func:`~.branch_stats.branch_test`: eta squared and a permutation p value)?
  ``separation``: the feeder's coordinates on the k right singular vectors, only where this layer is not
  itself grouped (it merges the branches: a grouped layer's M is block-diagonal, so its singular vectors
  separate the branches by construction); ``properties``: each other colouring, one test each. The
  depth profiles get ``branch_separation`` / ``branch_separation_p`` and ``branch_frequency`` /
  ``branch_frequency_p``.
"""

from __future__ import annotations

from functools import partial

import torch
from pydantic import BaseModel, ConfigDict, Field

from .base import Analysis, LazyResults, ModelContext, register_analysis, to_list
from .branch_stats import branch_test, kernel_frequency


#: rows of a linear layer's weight taken at a time by :func:`connection_matrix`
_ROWS = 64


class SVDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(8, ge=1, le=32, description="singular vectors kept (at most min(N1, N2))")


def connection_matrix(weight: torch.Tensor, groups: int = 1, n_feeder: int | None = None,
                      flatten_from: list | None = None) -> torch.Tensor:
    """|W| summed over kernel positions as the full (N2 x N1) matrix.

    weight: conv (N2, N1/groups, kh, kw) or linear (N2, in). For a linear after a flatten,
    ``flatten_from`` = [C, H, W] and the H*W positions of each channel are summed.
    """
    if weight.dim() == 4:
        N2, Cg = weight.shape[:2]
        a = weight.abs().sum(dim=(2, 3))  # (N2, Cg)
        if groups == 1:
            return a
        if N2 % groups:
            raise ValueError(f"out channels {N2} not divisible by groups {groups}")
        N1 = Cg * groups
        cols = (torch.arange(N2, device=weight.device) // (N2 // groups) * Cg)[:, None] + torch.arange(Cg, device=weight.device)
        return torch.zeros(N2, N1, dtype=a.dtype, device=a.device).scatter_(1, cols, a)
    if weight.dim() == 2:
        if flatten_from:
            C, H, W = (int(v) for v in flatten_from)
            if weight.shape[1] != C * H * W:
                raise ValueError(f"linear in_features {weight.shape[1]} != C*H*W of flatten_from {flatten_from}")
            # a block of rows at a time: |W| of a whole 100M-weight layer (VGG16's fc6) would be a 400 MB copy.
            # Each block's sums go straight into M: small results kept between the blocks' temporaries would
            # pin the freed blocks in the C heap, which then grows by a block per block
            M = weight.new_empty(weight.shape[0], C)
            for i in range(0, weight.shape[0], _ROWS):
                torch.sum(weight[i:i + _ROWS].abs().reshape(-1, C, H * W), dim=2, out=M[i:i + _ROWS])
            return M
        return weight.abs()
    raise ValueError(f"expected a conv or linear weight; got shape {tuple(weight.shape)}")


def _sign_fix(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip singular pairs so that every column of u has a non-negative sum (largest entry positive on a tie)."""
    s = u.sum(0)
    big = u.gather(0, u.abs().argmax(0, keepdim=True))[0]
    sign = torch.where(s.abs() > 1e-6 * u.abs().sum(0).clamp_min(1e-30), s.sign(), big.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return u * sign, v * sign


def top_svd(M: torch.Tensor, k: int, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k leading singular triplets of M (m x n) in float64: U (m, k), S (k,), V (n, k).

    Through the eigendecomposition of the Gram matrix of the smaller side (M^T M or M M^T, float64),
    about twice as fast as a full SVD for the square 512 x 512 matrices of VGG and exact for the
    leading triplets (their relative accuracy is ~1e-16 * s_max^2 / s_i^2). Singular values below
    1e-6 * s_max (not resolvable through the Gram matrix) are reported as 0 with zero vectors,
    not an arbitrary basis of the null space.

    ``backend``: "scipy" (LAPACK ?syevr for the top k only, ~3x faster than all eigenpairs on the CPU) or
    "torch" (``torch.linalg.eigh`` on M's device, all eigenpairs: the GPU path, no copy to the host).
    Default: torch on CUDA, scipy on the CPU. Both give the same triplets (tested).
    """
    M = M.double()
    m, n = M.shape
    k = min(k, m, n)
    tall = m >= n
    backend = backend or ("torch" if M.device.type != "cpu" else "scipy")
    if backend not in ("torch", "scipy"):
        raise ValueError(f"backend must be 'torch' or 'scipy'; got {backend!r}")
    G = M.T @ M if tall else M @ M.T
    size = G.shape[0]
    if backend == "torch":
        evals, evecs = torch.linalg.eigh(G)  # ascending
        lam = evals.flip(0)[:k].clamp_min(0)
        E = evecs.flip(1)[:, :k]
    else:
        import scipy.linalg

        evals, evecs = scipy.linalg.eigh(G.cpu().numpy(), subset_by_index=[size - k, size - 1], driver="evr")
        lam = torch.from_numpy(evals[::-1].copy()).to(M.device).clamp_min(0)
        E = torch.from_numpy(evecs[:, ::-1].copy()).to(M.device)
    S = lam.sqrt()
    # the Gram matrix resolves singular values down to ~1e-7 s_max (float64): below 1e-6 s_max, zero
    ok = S > 1e-6 * max(float(S[0]) if k else 0.0, 1e-300)
    other = (M @ E) if tall else (M.T @ E)
    other = torch.where(ok, other / S.clamp_min(1e-300), torch.zeros_like(other))
    E = torch.where(ok, E, torch.zeros_like(E))
    S = torch.where(ok, S, torch.zeros_like(S))
    return (other, S, E) if tall else (E, S, other)


def svd_of(M: torch.Tensor, k: int, overwrite: bool = False) -> dict:
    """Uncentred SVD and centred PCA of M (N2 x N1); see the module docstring for conventions.

    ``overwrite``: M (when float64) is the caller's to spend: it is centred in place, which saves a copy of it
    (134 MB for ConvNeXt-XL's 8192 x 2048 layers); the same subtraction, so the same results to the bit.
    """
    owned = overwrite or M.dtype != torch.float64  # .double() of another dtype is a copy of our own
    M = M.double()
    k = min(k, *M.shape)
    U, S, V = top_svd(M, k)
    u, v = _sign_fix(U, V)
    Mc = M.sub_(M.mean(0, keepdim=True)) if owned else M - M.mean(0, keepdim=True)
    Uc, Sc, Vc = top_svd(Mc, k)
    uc, vc = _sign_fix(Uc, Vc)
    tot = float(Mc.mul_(Mc).sum())  # = sum of all squared singular values of Mc; squared in place (Mc is ours)
    evr = (Sc ** 2 / tot) if tot > 0 else torch.zeros(k, dtype=M.dtype)
    return {"singular_values": S, "u": u, "v": v,
            "pca": {"explained_variance_ratio": evr, "u": uc, "v": vc}}


def colourfulness(weight: torch.Tensor) -> torch.Tensor:
    """For RGB filters (N, 3, kh, kw): mean over positions of the std across the 3 channels / RMS of the filter.

    In [0, 1]; 0 for a grey filter (same kernel on R, G and B), 1 for a filter whose channels sum
    to zero at every position with equal energy everywhere. 0 for an all-zero filter.
    """
    std = weight.std(dim=1, unbiased=False)  # (N, kh, kw)
    rms = weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    m = std.mean(dim=(1, 2))
    return torch.where(rms > 0, m / rms.clamp_min(1e-30), torch.zeros_like(m))


def _grouped(row: dict) -> int:
    g = int(row.get("groups") or 1)
    return g if g > 1 and not row.get("depthwise") else 1


def reads_image(feeder: dict, fw: torch.Tensor) -> bool:
    """A conv with spatial kernels on the network's input (no feeder of its own; 1 to 4 channels, not grouped):
    its kernels are image filters, whose frequency and orientation mean what they say."""
    return (fw.dim() == 4 and not feeder.get("feeds_from") and fw.shape[1] <= 4 and min(fw.shape[2:]) > 1
            and int(feeder.get("groups") or 1) == 1)


def feeder_properties(fw: torch.Tensor, feeder: dict, row: dict) -> dict[str, list]:
    """Every colouring of the feeder's neurons that applies, the default first: ``colourfulness`` (an RGB
    feeder conv, not grouped), ``branch`` (this layer or the feeder a grouped, not depthwise, conv),
    ``frequency`` and ``orientation`` (a feeder that reads the image) and ``norm`` (always: the L2 norm of
    each feeder neuron's weights)."""
    n1 = int(feeder["out_channels"])
    out: dict[str, list] = {}
    if fw.dim() == 4 and fw.shape[1] == 3 and int(feeder.get("groups") or 1) == 1:
        out["colourfulness"] = to_list(colourfulness(fw))
    g = _grouped(row) if _grouped(row) > 1 else _grouped(feeder)
    if g > 1:
        out["branch"] = (torch.arange(n1) // (n1 // g)).tolist()
    if reads_image(feeder, fw):
        frequency, orientation = kernel_frequency(fw)
        out["frequency"], out["orientation"] = to_list(frequency), to_list(orientation)
    out["norm"] = to_list(fw.flatten(1).norm(dim=1))
    return out


def branch_tests(props: dict[str, list], v: torch.Tensor, row: dict) -> dict | None:
    """The branch tests of the module docstring, or None where the feeder's neurons have no ``branch``.

    props: :func:`feeder_properties`; v: (N1, k) the feeder's coordinates on the right singular vectors.
    """
    if "branch" not in props:
        return None
    labels = torch.tensor(props["branch"])
    out: dict = {"separation": None, "properties": {}}
    if _grouped(row) == 1:
        live = v.abs().sum(0) > 0  # singular vectors reported as 0 (unresolvable) are left out
        if bool(live.any()):
            out["separation"] = branch_test(v[:, live], labels)
    for name, values in props.items():
        if name != "branch":
            out["properties"][name] = branch_test(torch.tensor(values, dtype=torch.float64), labels)
    return out


def _result(feeder: str, res: dict, prop: dict, props: dict, tests: dict | None) -> dict:
    """One layer's JSON result from :func:`svd_of`'s tensors and the feeder's colourings and tests."""
    return {
        "feeder": feeder,
        "singular_values": to_list(res["singular_values"]),
        "u": to_list(res["u"]), "v": to_list(res["v"]),
        "pca": {k: to_list(v) for k, v in res["pca"].items()},
        "feeder_property": prop,
        "feeder_properties": props,
        **({"branch_tests": tests} if tests else {}),
    }


@register_analysis
class SVD(Analysis):
    name = "svd"
    description = ("SVD (and centred PCA) of |W| summed over kernel positions between a layer and the conv "
                   "that feeds it; coordinates of both layers' neurons on the leading singular vectors.")
    Params = SVDParams
    needs_graph = "which conv feeds which (the SVD between a layer and its feeder)"

    def applies(self, row: dict) -> bool:
        """Conv (not depthwise) or linear layers fed by a conv."""
        return row.get("type") in ("conv", "linear") and bool(row.get("feeds_from")) and not row.get("depthwise")

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> LazyResults:
        from threadpoolctl import threadpool_limits

        # many small LAPACK calls: scipy's BLAS gets one thread too (torch's: the base class's run)
        with threadpool_limits(1):
            return self._layers(ctx, rows, params)

    def _layers(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> LazyResults:
        out = {}
        for row in rows:
            feeder = ctx.row(row["feeds_from"])
            if feeder.get("type") != "conv":
                raise ValueError(f"layer {row['name']!r}: feeder {feeder['name']!r} is a {feeder.get('type')}, not a conv")
            n1 = int(feeder["out_channels"])
            # float64 at once (what svd_of takes), so that the float32 matrix is not kept beside it: for a
            # wide layer (ConvNeXt-XL's 8192 x 2048 fc1) each copy of M is 67 MB in float32, 134 MB in float64
            M = connection_matrix(ctx.weight(row["name"]), groups=int(row.get("groups") or 1),
                                  flatten_from=row.get("flatten_from") if row["type"] == "linear" else None).double()
            if M.shape[1] != n1:
                raise ValueError(f"layer {row['name']!r} has {M.shape[1]} input channels but its feeder "
                                 f"{feeder['name']!r} has {n1} neurons")
            res = svd_of(M, params.k, overwrite=True)
            del M  # centred in place by svd_of: not this layer's matrix any more
            fw = ctx.weight(feeder["name"])
            props = feeder_properties(fw, feeder, row)
            name = next(iter(props))  # the default: colourfulness, else branch, else frequency, else norm
            prop = {"name": name, "values": props[name]}
            if name == "colourfulness" and "branch" in props:
                prop["branch"] = props["branch"]
            tests = branch_tests(props, res["v"], row)
            out[row["name"]] = partial(_result, feeder["name"], res, prop, props, tests)
        # the tensors are kept, their JSON lists made layer by layer as the pipeline writes them: as Python
        # lists, ConvNeXt-XL's 36 wide layers' u and pca.u (8192 x 8 each) would be some 180 MB at once
        return LazyResults(out)

    def scalars(self, result: dict) -> dict[str, float]:
        """``branch_separation`` (largest eta squared over the singular vectors) and ``branch_frequency``, each
        with its permutation p value, where the branch tests ran."""
        tests = result.get("branch_tests") or {}
        out = {}
        for key, test in (("branch_separation", tests.get("separation")),
                          ("branch_frequency", (tests.get("properties") or {}).get("frequency"))):
            if test:
                out[key], out[f"{key}_p"] = test["eta2_best"], test["p"]
        return out
