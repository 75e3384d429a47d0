"""The adapter's own evidence: how many directions a trained LoRA update uses, and whether a larger
rank found new ones.

For a module's update ``dW = s * B @ A`` (``B`` is out x r, ``A`` is r x in, ``s`` peft's scale),
QR of ``B`` and of ``A.T`` turns it into ``Qb (s * Rb @ Ra.T) Qa.T``: the singular values of the
small r x r core are those of ``dW`` (milliseconds, never an out x in matrix).

- the *effective rank* is the number of singular values that hold 90% of the update's energy
  (sum of squared singular values);
- between the adapters of ranks r and 2r, the *subspace similarity* of their top directions
  (LoRA paper, Hu et al. 2021, section 7.2): ``||U_i.T U_j||_F^2 / min(i, j)``, 1 when the smaller
  adapter's top directions lie inside the larger one's, ~``j/out`` for unrelated directions;
- the *extra energy*: the share of the 2r adapter's energy beyond its top r directions. Little
  extra energy and a high similarity say the larger rank found nothing new: evidence for stopping.

numpy only (the sweeper process that reads adapters never imports torch); peft stores the LoRA
weights in fp32 safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np

ENERGY = 0.9


def svd_of_update(a: np.ndarray, b: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(singular values, left singular vectors)`` of ``scale * b @ a`` through the r x r core."""
    qb, rb = np.linalg.qr(b.astype(np.float64))
    qa, ra = np.linalg.qr(a.astype(np.float64).T)
    u, sv, _ = np.linalg.svd(scale * rb @ ra.T)
    return sv, qb @ u


def effective_rank(sv: np.ndarray, energy: float = ENERGY) -> int:
    """How many of the largest singular values hold ``energy`` of the sum of their squares."""
    e = np.asarray(sv, dtype=np.float64) ** 2
    total = float(e.sum())
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(np.sort(e)[::-1]) / total, energy - 1e-12) + 1)


def subspace_similarity(u_i: np.ndarray, u_j: np.ndarray) -> float:
    """LoRA paper section 7.2: ``||u_i.T u_j||_F^2 / min(i, j)`` for orthonormal columns."""
    k = min(u_i.shape[1], u_j.shape[1])
    if k == 0:
        return float("nan")
    return float(np.linalg.norm(u_i.T @ u_j) ** 2 / k)


def _modules(adapter_dir: Path) -> Optional[tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]]:
    """``{module: (A, B)}`` and the scale of a saved peft adapter, or None when unreadable."""
    try:
        from safetensors.numpy import load_file

        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except Exception:  # noqa: BLE001 - missing, another machine's path, bf16 weights numpy cannot hold
        return None
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    out: dict[str, list] = {}
    for key, value in tensors.items():
        for part, idx in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if key.endswith(part):
                out.setdefault(key[: -len(part)], [None, None])[idx] = value
    return {k: (v[0], v[1]) for k, v in out.items() if v[0] is not None and v[1] is not None}, scale


def summarize(modules: Mapping[str, tuple[np.ndarray, np.ndarray]], scale: float) -> dict[str, float]:
    """Per adapter: the median and max effective rank over its modules, and the rank it was given."""
    ranks = [effective_rank(svd_of_update(a, b, scale)[0]) for a, b in modules.values()]
    r = max((a.shape[0] for a, _ in modules.values()), default=0)
    return {"effective_rank": float(np.median(ranks)) if ranks else 0.0, "effective_rank_max": float(max(ranks or [0])),
            "r": float(r), "modules": float(len(ranks))}


def adapter_summary(adapter_dir: str | Path) -> Optional[dict[str, float]]:
    got = _modules(Path(adapter_dir))
    return summarize(*got) if got else None


def compare(small_dir: str | Path, large_dir: str | Path) -> Optional[tuple[float, float]]:
    """``(median subspace similarity, median extra energy)`` of the larger adapter against the smaller,
    over the modules both adapt; None when either adapter cannot be read."""
    small, large = _modules(Path(small_dir) / "adapter"), _modules(Path(large_dir) / "adapter")
    if small is None or large is None:
        return None
    sims, extra = [], []
    for name, (a1, b1) in small[0].items():
        if name not in large[0]:
            continue
        a2, b2 = large[0][name]
        sv1, u1 = svd_of_update(a1, b1, small[1])
        sv2, u2 = svd_of_update(a2, b2, large[1])
        k1, k2 = effective_rank(sv1), effective_rank(sv2)
        if k1 == 0 or k2 == 0:
            continue
        sims.append(subspace_similarity(u1[:, :k1], u2[:, :k2]))
        e2 = sv2 ** 2
        extra.append(float(e2[a1.shape[0]:].sum() / max(e2.sum(), 1e-30)))
    if not sims:
        return None
    return float(np.median(sims)), float(np.median(extra))
