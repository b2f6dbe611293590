"""Statistics of one model on its own domain's data (memory ≈ the model + its gradients or Grams).

- Fisher (Matena & Raffel 2022, "Merging models with Fisher-weighted averaging"): diagonal
  Fᵢ = mean over examples of (∂ log p(y|x)/∂θ)². Variant ``hard_last`` (MergeBench's): the last
  position's logits with the model's own argmax as label; ``sft``: the response tokens' SFT loss.
- RegMean (Jin et al. 2023, "Dataless knowledge fusion by merging weights of language models"): per
  Linear layer the input Gram G = mean over tokens of xxᵀ ([in, in]); layers reading the same input
  (q/k/v, gate/up) share one computation.
- Localize-and-Stitch trained masks (He et al. 2025): logits S initialised to ±3 from the top-s mask of
  |τ|, trained on the SFT loss of θ₀ + σ(S)⊙τ (the base is never modified), mask = 1{σ(S) > ½}.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from hfmerge.stats.data import Example

MASK_INIT = 3.0


def _sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[0, :-1].float(), labels[1:], ignore_index=-100)


@torch.enable_grad()
def fisher(model: nn.Module, examples: list[Example], variant: str = "hard_last", names: set[str] | None = None,
           progress: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the parameters in ``names`` (default: all): mean over examples of the squared
    per-example gradient. Each gradient is folded into its accumulator and freed as soon as it is complete,
    and parameters outside ``names`` get no gradient, so memory is the model + the Fisher (+ activations)."""
    params = {}
    for n, p in model.named_parameters():
        p.requires_grad_(names is None or n in names)
        if p.requires_grad:
            params[n] = p
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    def fold(name: str):
        def hook(p: torch.Tensor) -> None:
            acc[name].addcmul_(p.grad, p.grad)
            p.grad = None
        return hook

    handles = [p.register_post_accumulate_grad_hook(fold(n)) for n, p in params.items()]
    model.eval()
    try:
        for ex in tqdm(examples, desc=f"fisher ({variant})", disable=not progress):
            logits = model(input_ids=ex.input_ids[None]).logits
            if variant == "hard_last":
                last = logits[0, -1].float()
                loss = nn.functional.cross_entropy(last[None], last.argmax()[None])
            else:
                loss = _sft_loss(logits, ex.labels)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    return {n: a.div_(len(examples)) for n, a in acc.items()}


@torch.no_grad()
def grams(model: nn.Module, examples: list[Example], progress: bool = True) -> dict[str, torch.Tensor]:
    """Input Gram matrices of every nn.Linear, keyed by its weight's name: G = Σ_tokens xxᵀ / #tokens.
    Layers fed the same input tensor (q/k/v, gate/up) share one computation and one accumulator."""
    sums: dict[str, torch.Tensor] = {}  # by weight name; shared-input layers hold the same tensor
    seen: dict[int, tuple[torch.Tensor, str]] = {}  # input tensor id -> (input, first layer fed it) per forward
    tokens = 0

    def hook(name: str):
        def fn(module, args):
            x = args[0]
            hit = seen.get(id(x))
            if hit is not None and hit[0] is x:
                sums.setdefault(name, sums[hit[1]])
                return
            seen[id(x)] = (x, name)
            flat = x.reshape(-1, x.shape[-1]).float()
            if name in sums:
                sums[name].addmm_(flat.T, flat)
            else:
                sums[name] = flat.T @ flat
        return fn

    handles = [m.register_forward_pre_hook(hook(f"{n}.weight")) for n, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    model.eval()
    try:
        for ex in tqdm(examples, desc="regmean grams", disable=not progress):
            seen.clear()
            model(input_ids=ex.input_ids[None])
            tokens += ex.input_ids.numel()
    finally:
        for h in handles:
            h.remove()
    for g in {id(g): g for g in sums.values()}.values():
        g.div_(tokens)
    return sums


def _topk_init(taus: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    from hfmerge.methods.selection import RadixSelect, rank_for_density

    sel = RadixSelect()
    for t in taus.values():
        sel.feed_high(t.abs())
    if sel.choose_bucket(rank_for_density(sel.n, sparsity)):
        for t in taus.values():
            sel.feed_low(t.abs())
    thr = sel.value()
    return {n: torch.where(t.abs() >= thr, MASK_INIT, -MASK_INIT) for n, t in taus.items()}


@torch.enable_grad()
def trained_masks(model: nn.Module, base_state: dict[str, torch.Tensor], names: list[str],
                  examples: list[Example], sparsity: float = 0.1, lr: float = 0.1, epochs: int = 1,
                  l1: float = 0.0, seed: int = 0, progress: bool = True) -> dict[str, torch.Tensor]:
    """Localize-and-Stitch masks trained through θ(S) = θ₀ + σ(S)⊙τ on the SFT loss (+ l1·mean σ(S))."""
    from torch.func import functional_call

    own = {n: p.detach() for n, p in model.named_parameters()}
    base = {n: base_state[n].float() for n in names}
    taus = {n: own[n].float() - base[n] for n in names}
    logits = {n: s.requires_grad_() for n, s in _topk_init(taus, sparsity).items()}
    opt = torch.optim.Adam(logits.values(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    for epoch in range(epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        for i in tqdm(order, desc=f"L&S masks epoch {epoch + 1}/{epochs}", disable=not progress):
            ex = examples[i]
            params = dict(own)
            for n in names:
                params[n] = (base[n] + torch.sigmoid(logits[n]) * taus[n]).to(own[n].dtype)
            out = functional_call(model, params, (ex.input_ids[None],))
            loss = _sft_loss(out.logits, ex.labels)
            if l1:
                total = sum(s.numel() for s in logits.values())
                loss = loss + l1 * sum(torch.sigmoid(s).sum() for s in logits.values()) / total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {n: (s.detach() > 0).to(torch.uint8) for n, s in logits.items()}
