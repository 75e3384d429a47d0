"""A task with a known answer: the sweep finds the planted rank, and the adapters show it.

The teacher is a tiny Llama base plus a rank-4 update on every linear layer a LoRA adapts
(tests/helpers/planted.py); students on the same 16-bit base learn from text the teacher sampled.
Measured on this task (1000 steps, lr 5e-3): eval loss 3.66, 3.47, 3.08, 3.08, 3.08 for r = 1..16,
effective ranks 1, 2, 4, 5, 7.5 (median over the 14 adapted modules).
"""

from __future__ import annotations

import json

import pytest
from helpers.planted import make_task
from helpers.run import ranksweep

pytestmark = pytest.mark.slow

K = 4
TARGETS = "q_proj+k_proj+v_proj+o_proj+gate_proj+up_proj+down_proj"


def test_the_sweep_recommends_the_planted_rank(tmp_path):
    ov = make_task(tmp_path / "task", k=K, scale=3.0, n=3000, length=32, targets=TARGETS)
    proc = ranksweep(tmp_path, "-m", *[f"{k}={v}" for k, v in ov.items()], "trainer=tiny", "trainer.max_steps=1000",
                     "trainer.eval_every=250", "trainer.micro_batch=16", "trainer.lr=5e-3", "trainer.schedule=cosine",
                     "lora.dropout=0", "data.eval_size=600", "hydra.sweeper.start_rank=1", "hydra.sweeper.max_rank=16",
                     "hydra.sweeper.margin=0.01", "hydra.sweeper.study_name=planted",
                     # the check's two 3000-step runs would nearly double this test (test_noise covers it)
                     "hydra.sweeper.budget_check=0", cache=tmp_path / "cache",
                     timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (lad,) = json.loads((tmp_path / "outputs" / "sweeps" / "planted" / "sweep_summary.json").read_text())["ladders"]
    rungs = {r["rank"]: r for r in lad["rungs"]}
    assert lad["recommendation"]["rank"] == K, (lad["recommendation"], {r: x["mean"] for r, x in rungs.items()})
    assert "knee" not in lad["recommendation"]["why"] and lad["knee"] is None  # one answer: the margin rule's
    assert rungs[K // 2]["gain"]["lo"] > 0 and rungs[K]["gain"]["lo"] > lad["margin"]  # below k: confidently worse
    assert lad["stop_reason"].startswith("no confident gain") or "max_rank" in lad["stop_reason"]
    # The adapters' own evidence: below k they use every direction they have; from k on, about k of them.
    assert rungs[1]["effective_rank"] == 1 and rungs[2]["effective_rank"] == 2
    assert rungs[K]["effective_rank"] == K
    for r in (8, 16):
        if r in rungs:
            assert K <= rungs[r]["effective_rank"] <= 2 * K, (r, rungs[r]["effective_rank"])
