"""mergekit configs: each translated feature against an independent float64 reference written from mergekit
0.1.5's semantics (gradients, filters, precedence, GTA normalisation, SLERP, Model Stock, Breadcrumbs, DELLA),
and refusals that name the feature."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from hfmerge.config import MergeConfig
from hfmerge.engine import merge, merge_state_dict
from hfmerge.errors import HfMergeError
from hfmerge.methods.steps import RNG_BLOCK, block_seed
from tests.reference import dare_mask, load_model
from tests.tiny import make_tokenizer

LAYERS = 5


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """fp32 Llama with 5 layers (so gradients interpolate), a base and 3 experts = base + dense noise of
    0.6× each tensor's scale (not colinear with the base: SLERP takes its spherical branch)."""
    root = tmp_path_factory.mktemp("mkfam")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=40, num_hidden_layers=LAYERS,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=3, max_position_embeddings=64)
    base = LlamaForCausalLM(cfg).float()
    paths = []
    for i in range(4):
        folder = root / ("base" if i == 0 else f"e{i}")
        base.save_pretrained(folder)
        make_tokenizer(folder)
        if i:
            gen = torch.Generator().manual_seed(i)
            sd = {k: (v + 0.6 * (v.std() if v.numel() > 1 and v.std() > 0 else 1.0)
                      * torch.randn(v.shape, generator=gen)).contiguous()
                  for k, v in base.state_dict().items()}
            save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
        paths.append(folder)
    return paths


def mk(fam, method, models, **extra):
    return {"merge_method": method, "models": models, "dtype": "float32", **extra}


def run(d) -> dict[str, torch.Tensor]:
    return merge_state_dict(MergeConfig.from_dict(d))


def f64(folder) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in load_model(folder).items()}


# ---- an independent reading of mergekit's parameter settings -------------------------------------------

def setting(s, name, t):
    if isinstance(s, dict):
        s = [s]
    if not isinstance(s, list):
        return s
    if all(isinstance(x, int | float) for x in s):
        pos = t * (len(s) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (pos - lo) * (s[hi] - s[lo])
    for c in s:
        if c.get("filter") in (None, "*") or c["filter"] in name:
            return setting(c["value"], name, t)
    return None


def t_of(name):
    parts = name.split(".")
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) / (LAYERS - 1)
    return 0.0


def lookup(key, name, *levels, default=None):
    for level in levels:
        if level and key in level:
            v = setting(level[key], name, t_of(name))
            if v is not None:
                return v
    return default


def topk_mask(delta, density):
    """mergekit's magnitude(): the top max(1, int(d·n)) entries by |δ| (argsort), d ≥ 1 keeps all."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = True
    return mask.view_as(delta)


def band_mask(delta, density, gamma):
    """mergekit's magnitude_outliers(): ascending sort, keep indices [n_bot, n_bot + int(d·n))."""
    n = delta.numel()
    target = int(density * n)
    bot = max(0, n - target - int(gamma * n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.sort(delta.abs().reshape(-1)).indices[bot:bot + target]] = True
    return mask.view_as(delta)


def gta(base, deltas, weights, masks, consensus, normalize, lam, rescale):
    """mergekit's GeneralizedTaskArithmetic.merge_group in float64."""
    out = []
    for d, m in zip(deltas, masks, strict=True):
        kept = d * m
        if rescale and d.abs().sum() >= 1e-7 and kept.abs().sum() >= 1e-7:
            kept = kept * (d.abs().sum() / kept.abs().sum())
        out.append(kept)
    w = torch.tensor(weights, dtype=torch.float64).view(-1, *[1] * base.dim())
    wd = torch.stack(out) * w
    if consensus:
        majority = torch.where(wd.sum(0) >= 0, 1.0, -1.0)
        sel = wd.sign() == majority
        mixed, div = (wd * sel).sum(0), (w * sel).sum(0)
        div[div == 0] = 1
    else:
        mixed, div = wd.sum(0), w.sum(0).expand_as(base).clone()
        div[div.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / div
    return base + lam * mixed


def close(ours, ref, tol=1e-5, slack=0):
    """Every tensor within ``tol`` (relative to its largest entry), but for at most ``slack`` entries per tensor."""
    assert set(ours) == set(ref)
    for n in ref:
        off = (ours[n].double() - ref[n]).abs() > tol * ref[n].abs().max().clamp_min(1e-12)
        assert int(off.sum()) <= slack, (n, int(off.sum()))


# ---- translated features against the reference --------------------------------------------------------

def test_ties_example_gradients_filters_per_model_density(fam):
    """mergekit's examples/ties.yml on the family: density gradient, weight gradient, weight by filter,
    per-model densities, normalize (Σ wᵢ over the agreeing tasks), int8_mask ignored; every tensor merged."""
    base, e1, e2, e3 = fam
    models = [
        {"model": str(e1), "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
        {"model": str(e2), "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
        {"model": str(e3), "parameters": {"density": 0.33, "weight": [{"filter": "mlp", "value": 0.5},
                                                                        {"value": 0}]}},
    ]
    d = mk(fam, "ties", models, base_model=str(base), parameters={"normalize": True, "int8_mask": True})
    ours = run(d)
    B, E = f64(base), [f64(e) for e in (e1, e2, e3)]
    ref = {}
    for n in B:
        dens = [lookup("density", n, m["parameters"], default=1.0) for m in models]
        ws = [lookup("weight", n, m["parameters"]) for m in models]
        deltas = [e[n] - B[n] for e in E]
        ref[n] = gta(B[n], deltas, ws, [topk_mask(x, k) for x, k in zip(deltas, dens, strict=True)],
                     True, True, 1.0, False)
    assert "model.embed_tokens.weight" in ours and not torch.equal(ours["lm_head.weight"].double(), B["lm_head.weight"])
    # hfmerge's top-k keeps |τ| ≥ the (n − ⌊d·n⌋)-th smallest (the TIES reference rule): one entry more than
    # mergekit's ⌊d·n⌋ per trimmed expert, so at most 3 entries of a tensor may differ
    close(ours, ref, slack=3)


def test_task_arithmetic_lambda_merges_embeddings(fam):
    base, e1, e2, _ = fam
    d = mk(fam, "task_arithmetic", [{"model": str(base)}, {"model": str(e1), "parameters": {"weight": 0.7}},
                                    {"model": str(e2), "parameters": {"weight": [0.2, 1.0]}}],
           base_model=str(base), parameters={"lambda": 0.6, "normalize": False})
    ours = run(d)
    B, E1, E2 = f64(base), f64(e1), f64(e2)
    ref = {n: B[n] + 0.6 * (0.7 * (E1[n] - B[n]) + (0.2 + 0.8 * t_of(n)) * (E2[n] - B[n])) for n in B}
    close(ours, ref)
    d["parameters"]["normalize"] = True
    ours = run(d)
    ref = {n: B[n] + 0.6 * (0.7 * (E1[n] - B[n]) + (0.2 + 0.8 * t_of(n)) * (E2[n] - B[n])) / (0.9 + 0.8 * t_of(n))
           for n in B}
    close(ours, ref)


def test_linear_without_base_first_model_is_template(fam, tmp_path):
    base, e1, e2, _ = fam
    d = mk(fam, "linear", [{"model": str(e1), "parameters": {"weight": 1.0}},
                           {"model": str(e2), "parameters": {"weight": 0.3}},
                           {"model": str(base), "parameters": {"weight": 0.5}}])
    cfg = MergeConfig.from_dict(d)
    assert cfg.base_model == str(e1) and cfg.method == "soup" and len(cfg.models) == 3 and cfg.skip == []
    ours = merge_state_dict(cfg)
    B, E1, E2 = f64(base), f64(e1), f64(e2)
    close(ours, {n: (E1[n] + 0.3 * E2[n] + 0.5 * B[n]) / 1.8 for n in B})


def slerp_ref(a, b, t):
    """mergekit's slerp(): whole-tensor angle, linear when |cos| > 0.9995."""
    na, nb = a.norm(), b.norm()
    na, nb = (na if na > 1e-8 else 1.0), (nb if nb > 1e-8 else 1.0)
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    om = math.acos(dot)
    return math.sin((1 - t) * om) / math.sin(om) * a + math.sin(t * om) / math.sin(om) * b


def test_slerp_slices_with_filtered_t_gradients(fam, tmp_path):
    """The community's most common config: slices over the full range, t gradients per filter, fallback."""
    base, e1, _, _ = fam
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]
    d = {"slices": [{"sources": [{"model": str(base), "layer_range": [0, LAYERS]},
                                 {"model": str(e1), "layer_range": [0, LAYERS]}]}],
         "merge_method": "slerp", "base_model": str(base), "parameters": {"t": t}, "dtype": "float32",
         "tokenizer_source": "base", "chat_template": "auto"}
    (tmp_path / "slerp.yml").write_text(text := yaml.safe_dump(d, sort_keys=False))
    report = merge(MergeConfig.from_file(tmp_path / "slerp.yml"), tmp_path / "out", progress=False)
    ours = load_model(tmp_path / "out")
    B, E = f64(base), f64(e1)
    close(ours, {n: slerp_ref(B[n], E[n], setting(t, n, t_of(n))) for n in B})
    q = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.allclose(ours[q].double(), 0.75 * B[q] + 0.25 * E[q], atol=1e-4)  # spherical, not linear
    card = (tmp_path / "out" / "README.md").read_text()
    assert text.strip() in card and "## mergekit configuration" in card
    resolved = yaml.safe_load((tmp_path / "out" / "hfmerge.yaml").read_text())
    assert resolved["method"] == "slerp" and resolved["per_tensor"]["parameters"]["t"] == t
    assert resolved["skip"] == [] and report["tensors_merged"] == len(B)
    again = merge_state_dict(MergeConfig.from_file(tmp_path / "out" / "hfmerge.yaml"))  # the translation re-runs
    assert all(torch.equal(again[n], ours[n]) for n in ours)


def test_breadcrumbs_ties_and_breadcrumbs(fam):
    base, e1, e2, _ = fam
    models = [{"model": str(e1), "parameters": {"weight": 0.6, "density": 0.5, "gamma": 0.05}},
              {"model": str(e2), "parameters": {"weight": 0.4, "density": [0.3, 0.9]}}]
    B, E = f64(base), [f64(e1), f64(e2)]
    for method, consensus in (("breadcrumbs_ties", True), ("breadcrumbs", False)):
        ours = run(mk(fam, method, models, base_model=str(base), parameters={"normalize": True, "lambda": 0.9}))
        ref = {}
        for n in B:
            deltas = [e[n] - B[n] for e in E]
            masks = [band_mask(x, lookup("density", n, m["parameters"]), lookup("gamma", n, m["parameters"],
                                                                                  default=0.01))
                     for x, m in zip(deltas, models, strict=True)]
            ref[n] = gta(B[n], deltas, [0.6, 0.4], masks, consensus, True, 0.9, False)
        close(ours, ref)


def uniforms(seed, name, task, numel):
    """The documented random stream: per block of RNG_BLOCK elements, int64 draws from a generator seeded by
    block_seed, read as 16-bit quarters, top bit dropped."""
    gen, out = torch.Generator(), []
    for b in range(math.ceil(numel / RNG_BLOCK)):
        gen.manual_seed(block_seed(seed, name, task, b))
        size = min(RNG_BLOCK, numel - b * RNG_BLOCK)  # the block's first draws (a prefix of its stream)
        out.append(torch.empty((size + 3) // 4, dtype=torch.int64).random_(generator=gen).view(torch.int16).int()
                   % (1 << 15))
    return torch.cat(out)[:numel]


def test_dare_ties_against_reference_and_keep_rate(fam):
    base, e1, e2, e3 = fam
    models = [{"model": str(e), "parameters": {"weight": w, "density": 0.3}} for e, w in ((e1, 0.5), (e2, 0.3),
                                                                                           (e3, 0.2))]
    B, E = f64(base), [f64(e) for e in (e1, e2, e3)]
    dropped = {n: [(uniforms(0, n, i, B[n].numel()) >= round(0.7 * 2**15)).view(B[n].shape) for i in range(3)]
               for n in B}  # keep when u ≥ round(p·2¹⁵), p = 1 − density (the documented DARE draw)
    assert torch.equal(dropped["lm_head.weight"][1].reshape(-1), dare_mask(0, "lm_head.weight", 1,
                                                                             B["lm_head.weight"].numel(), 0.7))
    for method, consensus in (("dare_ties", True), ("dare_linear", False)):
        ours = run(mk(fam, method, models, base_model=str(base)))
        ref, kept, total = {}, [0, 0, 0], 0
        for n in B:
            deltas = [e[n] - B[n] for e in E]
            masks = dropped[n]
            ref[n] = gta(B[n], deltas, [0.5, 0.3, 0.2], masks, consensus, False, 1.0, True)
            kept = [k + int(m.sum()) for k, m in zip(kept, masks, strict=True)]
            total += B[n].numel()
        close(ours, ref)
    sd = math.sqrt(0.3 * 0.7 / total)
    assert all(abs(k / total - 0.3) < 4 * sd for k in kept), (kept, total)
    names = list(B)
    m0, m1 = (torch.cat([dropped[n][i].reshape(-1) for n in names]) for i in (0, 1))
    assert abs(float((m0 & m1).float().mean()) - 0.09) < 4 * math.sqrt(0.09 * 0.91 / total)  # independent experts


def test_della_against_reference(fam):
    base, e1, e2, _ = fam
    models = [{"model": str(e1), "parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}},
              {"model": str(e2), "parameters": {"weight": 0.5, "density": 0.6}}]
    B, E = f64(base), [f64(e1), f64(e2)]
    for method, consensus, normalize in (("della", True, True), ("della_linear", False, False)):
        ours = run(mk(fam, method, models, base_model=str(base)))
        ref = {}
        for n in B:
            deltas = [e[n] - B[n] for e in E]
            masks = []
            for i, (x, (dd, eps)) in enumerate(zip(deltas, ((0.5, 0.1), (0.6, 0.15)), strict=True)):
                rows = x.reshape(1, -1) if x.dim() < 2 else x
                rank = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).double()
                p = (dd - eps) + rank / (rows.shape[1] - 1) * 2 * eps
                u = uniforms(0, n, i, rows.numel()).view(rows.shape)
                masks.append((u < p * 2**15).view(x.shape))
            ref[n] = gta(B[n], deltas, [1.0, 0.5], masks, consensus, normalize, 1.0, True)
        close(ours, ref)


def test_model_stock_against_reference_and_singular_t(fam, tmp_path):
    base, e1, e2, e3 = fam
    d = mk(fam, "model_stock", [{"model": str(base)}, {"model": str(e1)}, {"model": str(e2)}, {"model": str(e3)}],
           base_model=str(base))
    ours = run(d)
    B, E = f64(base), [f64(e) for e in (e1, e2, e3)]
    ref = {}
    for n in B:
        taus = [(e[n] - B[n]).reshape(-1) for e in E]
        cos = [float(taus[i] @ taus[j] / (taus[i].norm() * taus[j].norm())) for i in range(3) for j in range(i + 1, 3)]
        c = sum(cos) / 3
        t = 3 * c / (1 + 2 * c)
        ref[n] = B[n] + t * sum(x.view_as(B[n]) for x in (e[n] - B[n] for e in E)) / 3
    close(ours, ref)
    # τ₂ = −τ₁: cos θ = −1 = −1/(N−1), t is infinite: refused naming the tensor
    anti = tmp_path / "anti"
    anti.mkdir()
    for f in base.iterdir():
        if f.name != "model.safetensors":
            (anti / f.name).write_bytes(f.read_bytes())
    E1 = load_model(e1)
    save_file({n: (2 * v - E1[n]).contiguous() for n, v in load_model(base).items()}, anti / "model.safetensors")
    with pytest.raises(HfMergeError, match=r"model_stock on \S+weight: .*infinite"):
        run(mk(fam, "model_stock", [{"model": str(e1)}, {"model": str(anti)}], base_model=str(base)))


# ---- refusals name the feature ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, why", [
    ({"merge_method": "passthrough"}, "passthrough"),
    ({"merge_method": "sce"}, "merge_method 'sce'"),
    ({"slices": "two"}, "output slices"),
    ({"slices": [{"sources": [{"model": "a", "layer_range": [0, 3]}, {"model": "b", "layer_range": [2, 5]}]}]},
     "layer ranges"),
    ({"slices": [{"sources": [{"model": "a", "layer_range": [0, 5]}]}] * 2}, "output slices"),
    ({"tokenizer_source": "union"}, "tokenizer source 'union'"),
    ({"tokenizer": {"source": "base", "tokens": {"<x>": {}}}}, "tokenizer.tokens"),
    ({"chat_template": "chatml"}, "chat_template 'chatml'"),
    ({"merge_method": "linear", "parameters": {"normalize": False}}, "normalize: false"),
    ({"merge_method": "model_stock", "parameters": {"filter_wise": True}}, "filter_wise"),
    ({"parameters": {"nuslerp_flatten": True}}, "no parameter 'nuslerp_flatten'"),
    ({"merge_method": "dare_ties", "models": [{"model": "a"}, {"model": "b"}]}, "has no weight"),
    ({"merge_method": "slerp", "models": [{"model": "a"}, {"model": "b"}, {"model": "c"}]}, "exactly two"),
    ({"merge_method": "slerp", "models": [{"model": "a"}, {"model": "b"}]}, "needs the parameter t"),
    ({"base_model": None}, "needs a base_model"),
    ({"modules": {}}, "modules"),
])
def test_refusals_name_the_feature(change, why):
    d = {"merge_method": "ties", "base_model": "a",
         "models": [{"model": "a"}, {"model": "b", "parameters": {"weight": 1.0}},
                    {"model": "c", "parameters": {"weight": 1.0}}]}
    d.update(change)
    if change.get("slices"):
        d.pop("models")
    with pytest.raises(HfMergeError, match=why):
        MergeConfig.from_dict({k: v for k, v in d.items() if v is not None})


def test_bad_values_refused_before_writing(fam, tmp_path):
    base, e1, e2, _ = fam
    short = {"slices": [{"sources": [{"model": str(base), "layer_range": [0, 3]},
                                     {"model": str(e1), "layer_range": [0, 3]}]}],
             "merge_method": "slerp", "base_model": str(base), "parameters": {"t": 0.5}}
    with pytest.raises(HfMergeError, match=r"layer range \[0, 3\] does not cover the base's 5 layers"):
        merge(MergeConfig.from_dict(short), tmp_path / "o1", progress=False)
    bad = mk(fam, "ties", [{"model": str(e1), "parameters": {"weight": 1.0, "density": [0.5, 1.5]}}],
             base_model=str(base))
    with pytest.raises(HfMergeError, match=r"density=1\.\d+ is out of range.*tensor model\.layers\.\d"):
        merge(MergeConfig.from_dict(bad), tmp_path / "o2", progress=False)
    della = mk(fam, "della", [{"model": str(e1), "parameters": {"weight": 1.0, "density": 0.9, "epsilon": 0.2}}],
               base_model=str(base))
    with pytest.raises(HfMergeError, match="density ± epsilon"):
        merge(MergeConfig.from_dict(della), tmp_path / "o3", progress=False)
    assert not any(tmp_path.iterdir())


def test_native_methods_match_translation(fam):
    """The new methods are native too: the same merge from hfmerge's own config."""
    base, e1, e2, _ = fam
    native = MergeConfig.from_dict({"method": "breadcrumbs_ties", "base_model": str(base), "skip": [],
                                    "models": [str(e1), {"model": str(e2), "weight": 0.5}],
                                    "parameters": {"density": 0.4, "gamma": 0.02, "normalize": True}})
    translated = MergeConfig.from_dict(mk(fam, "breadcrumbs_ties", [
        {"model": str(e1), "parameters": {"weight": 1.0}}, {"model": str(e2), "parameters": {"weight": 0.5}}],
        base_model=str(base), parameters={"density": 0.4, "gamma": 0.02, "normalize": True}))
    a, b = merge_state_dict(native), merge_state_dict(translated)
    assert all(torch.equal(a[n], b[n]) for n in a)


def nuslerp_ref(t, v0, v1, flatten, row_wise):
    """mergekit's nuslerp() in float64."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    th = torch.acos((u0 * u1).sum(-1, keepdim=True).clamp(-1, 1))
    res = (torch.sin((1 - t) * th) * v0 + torch.sin(t * th) * v1) / torch.sin(th)
    if row_wise and not flatten:
        res = res.transpose(0, -1)
    return res.reshape(shape)


def test_nuslerp_with_and_without_base(fam):
    base, e1, e2, _ = fam
    B, E1, E2 = f64(base), f64(e1), f64(e2)
    models = [{"model": str(e1), "parameters": {"weight": 1.0}},
              {"model": str(e2), "parameters": {"weight": [{"filter": "mlp", "value": 3.0}, {"value": 1.0}]}}]
    ours = run(mk(fam, "nuslerp", models, base_model=str(base)))
    close(ours, {n: B[n] + nuslerp_ref(0.75 if "mlp" in n else 0.5, E1[n] - B[n], E2[n] - B[n], True, False)
                 for n in B})
    ours = run(mk(fam, "nuslerp", models, parameters={"nuslerp_flatten": False, "nuslerp_row_wise": True}))
    close(ours, {n: nuslerp_ref(0.75 if "mlp" in n else 0.5, E1[n], E2[n], False, True) for n in B})
