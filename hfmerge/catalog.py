"""The MergeBench catalog: 8 base models × 5 domains = 40 experts, and their aliases.

``mergebench:<base name>`` (e.g. ``mergebench:Llama-3.2-3B``) stands for that base and its five experts;
experts are ``MergeBench/<base name>_<domain>``, each paired BY DOMAIN NAME with its validation data
``MergeBench/<domain>_val`` (the reference code pairs them by list position and mismatches four of five)."""

from __future__ import annotations

from hfmerge.errors import HfMergeError
from hfmerge.suggest import close_matches

DOMAINS = ("instruction", "math", "coding", "multilingual", "safety")
BASES = {  # base name in expert ids -> (base repo, tied embeddings)
    "Llama-3.2-3B": ("meta-llama/Llama-3.2-3B", True),
    "Llama-3.2-3B-Instruct": ("meta-llama/Llama-3.2-3B-Instruct", True),
    "Llama-3.1-8B": ("meta-llama/Llama-3.1-8B", False),
    "Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B-Instruct", False),
    "gemma-2-2b": ("google/gemma-2-2b", True),
    "gemma-2-2b-it": ("google/gemma-2-2b-it", True),
    "gemma-2-9b": ("google/gemma-2-9b", True),
    "gemma-2-9b-it": ("google/gemma-2-9b-it", True),
}
ALIAS = "mergebench:"


def expert_id(base_name: str, domain: str) -> str:
    return f"MergeBench/{base_name}_{domain}"


def validation_data(domain: str) -> str:
    return f"MergeBench/{domain}_val"


def experts() -> list[str]:
    return [expert_id(b, d) for b in BASES for d in DOMAINS]


def resolve_alias(alias: str) -> tuple[str, list[str]]:
    """``mergebench:<base name>`` -> (base repo, its five experts)."""
    name = alias[len(ALIAS):]
    if name not in BASES:
        near = close_matches(name, BASES)  # compared without the common prefix
        raise HfMergeError(f"unknown catalog alias {alias!r} (" + (f"did you mean {ALIAS}{near[0]}?" if near else
                           f"valid: {', '.join(ALIAS + b for b in BASES)}") + "); see `hfmerge catalog`")
    return BASES[name][0], [expert_id(name, d) for d in DOMAINS]


def expand(refs: list[str]) -> list[str]:
    """Refs with every alias replaced by its base and experts (for `hfmerge pull`)."""
    out = []
    for ref in refs:
        if ref.startswith(ALIAS):
            base, exp = resolve_alias(ref)
            out += [base, *exp]
        else:
            out.append(ref)
    return out


def domain_of(ref: str) -> str | None:
    """The MergeBench domain of a catalog expert id (with or without @revision), else None."""
    repo = ref.split("@")[0]
    if not repo.startswith("MergeBench/"):
        return None
    name, _, domain = repo[len("MergeBench/"):].rpartition("_")
    return domain if name in BASES and domain in DOMAINS else None


def table() -> str:
    rows = [f"{'base model':36s} {'tied':5s} experts (MergeBench/<base>_<domain>)"]
    for name, (repo, tied) in BASES.items():
        rows.append(f"{repo:36s} {'yes' if tied else 'no':5s} " + ", ".join(expert_id(name, d) for d in DOMAINS))
    return "\n".join(rows)
