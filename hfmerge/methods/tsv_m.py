"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in Model Merging")."""

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods.base import Chunk, Method, Param
from hfmerge.methods.subspace import is_matrix, polar, touched


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Per matrix: τᵢ ≈ Uᵢ,ₖ diag(sᵢ,ₖ) Vᵢ,ₖᵀ (top k = ⌊r/N⌋ triplets, r = min(rows, cols)); U = [U₁,ₖ … U_N,ₖ],
    s, V likewise; Δ = polar(U)·diag(s)·polar(V)ᵀ; θ = θ₀ + λΔ. Other tensors: θ₀ + λ·mean(τᵢ).

    The concatenation has N·k ≤ r columns (no zero padding, so no arbitrary null-space columns)."""
    taus = chunk.task_vectors()
    lam = params["scaling"]
    if not is_matrix(chunk):
        return taus.mean(0).mul_(lam).add_(chunk.base)
    n, rows, cols = taus.shape
    k = min(rows, cols) // n
    if k == 0:
        raise HfMergeError(f"tsv_m: {chunk.name} is {rows}×{cols}, rank at most {min(rows, cols)} < {n} experts, so "
                           "k = ⌊r/N⌋ would be 0 (a zero task vector): merge fewer experts or skip this tensor")
    us, ss, vs = [], [], []
    for tau in taus:  # one expert's SVD at a time
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k])
    delta = (polar(torch.cat(us, 1)) * torch.cat(ss)) @ polar(torch.cat(vs, 0))
    touched(chunk, "tsv_m")
    return delta.mul_(lam).add_(chunk.base)


METHOD = Method(
    name="tsv_m",
    summary="TSV-Merge: each expert's top ⌊r/N⌋ singular directions per matrix, decorrelated by polar factors",
    formula="τᵢ ≈ Uᵢ,ₖ Σᵢ,ₖ Vᵢ,ₖᵀ, k = ⌊r/N⌋;  θ = θ₀ + λ·polar([Uᵢ,ₖ])·diag([Σᵢ,ₖ])·polar([Vᵢ,ₖ])ᵀ per matrix; "
            "other tensors θ₀ + λ·mean τᵢ",
    paper="Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference in Model Merging (arXiv:2412.00081)",
    params={"scaling": Param(1.0, "λ, the scale of the merged task vector", low=0.0, low_open=True)},
    merge=merge,
    weighted=False,
    whole=lambda params: True,
)
