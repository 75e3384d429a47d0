"""The rank method against an exhaustive grid: same task, same answer, what share of the steps?

The task has a known answer (tests/helpers/planted.py): a tiny Llama base plus a planted rank-k
update on its o_proj and down_proj layers is the teacher; text it samples trains students on the
same 16-bit base. The grid trains every rank of the ladder at every learning rate of a log grid
to the end and applies the same margin rule to the best learning rate of each rank. The sweep is
``ranksweep -m`` with ``hydra.sweeper.search`` over the same learning-rate interval, successive
halving inside each rank and the margin stop rule. Reported: both recommendations, the planted
rank, and the training steps each spent (a pruned trial counts the steps it ran).

    python bench/rank_method.py                       # k=4, ranks 1..16, 6 learning rates
    python bench/rank_method.py --md bench/rank-method-latest.md --json bench/rank-method-latest.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the planted task lives with the tests that check it
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
MARGIN = 0.01  # the planted task's margin (tests/test_planted.py): 1% of the objective


TARGETS = "q_proj+k_proj+v_proj+o_proj+gate_proj+up_proj+down_proj"


def task(root: Path, k: int) -> list[str]:
    from helpers.planted import make_task

    ov = make_task(root, k=k, scale=3.0, n=3000, length=32, targets=TARGETS)
    return [f"{key}={value}" for key, value in ov.items()]


def common(args: argparse.Namespace) -> list[str]:
    return ["trainer=tiny", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
            "trainer.micro_batch=16", "trainer.schedule=cosine", "lora.dropout=0", "data.eval_size=600",
            "logger=none"]


def grid(ov: list[str], args: argparse.Namespace, root: Path) -> dict:
    """Every (rank, lr) trained to the end in this process (the base loaded once)."""
    import torch

    from ranksweep.compose import compose
    from ranksweep.config import to_run_config
    from ranksweep.job import cached_base
    from ranksweep.trial import run_trial

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = []
    for r in args.ranks:
        for lr in args.lrs:
            run = to_run_config(compose([*ov, *common(args), f"lora.r={r}", f"trainer.lr={lr}",
                                         f"cache_dir={root / 'cache'}"]))
            t0 = time.perf_counter()
            res = run_trial(run, root / "grid" / f"r{r}-lr{lr:g}", base_loader=lambda run=run: cached_base(run))
            m = res.metrics
            rows.append({"rank": r, "lr": lr, "value": res.objective, "steps": m["steps"],
                         "s": time.perf_counter() - t0, "examples": m["eval_examples"],
                         "effective_rank": m["adapter"]["effective_rank"]})
            print(f"grid r={r} lr={lr:g}: {res.objective:.4f} ({m['steps']} steps)", flush=True)
    return {"rows": rows, "steps": sum(x["steps"] for x in rows)}


def grid_answer(rows: list[dict]) -> dict:
    from ranksweep.sweep.rules import Step
    from ranksweep.sweep.rules.margin import MarginRule
    from ranksweep.sweep.stats import Examples

    steps = []
    for r in sorted({x["rank"] for x in rows}):
        best = min((x for x in rows if x["rank"] == r), key=lambda x: x["value"])
        ex = Examples.of([best["examples"]["loss"]], best["examples"]["tokens"])
        steps.append(Step(r, best["value"], ex, [best["value"]]))
    rec = MarginRule(margin=MARGIN).recommend(steps, None)
    return {"rank": rec.rank, "why": rec.why,
            "best_lr": {r: min((x for x in rows if x["rank"] == r), key=lambda x: x["value"])["lr"]
                        for r in sorted({x["rank"] for x in rows})}}


def sweep(ov: list[str], args: argparse.Namespace, root: Path) -> dict:
    import optuna

    lo, hi = min(args.lrs), max(args.lrs)
    cmd = [str(Path(sys.executable).parent / "ranksweep"), "-m", *ov, *common(args),
           f"hydra.sweeper.start_rank={min(args.ranks)}", f"hydra.sweeper.max_rank={max(args.ranks)}",
           f'+hydra.sweeper.search={{trainer.lr: "tag(log, interval({lo}, {hi}))"}}',
           f"hydra.sweeper.search_budget={args.budget}", f"hydra.sweeper.margin={MARGIN}",
           "hydra.sweeper.study_name=bench"]
    env = dict(os.environ, RANKSWEEP_CACHE=str(root / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed: {proc.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    doc = json.loads((root / "outputs" / "sweeps" / "bench" / "sweep_summary.json").read_text())
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{root / 'outputs' / 'ranksweep.db'}")
    spent = 0
    for t in study.get_trials():
        if t.user_attrs.get("rank", 0) == 0:
            continue
        spent += int(t.user_attrs.get("steps") or max(t.intermediate_values or {0: 0}))
    (lad,) = doc["ladders"]
    return {"rank": lad["recommendation"]["rank"], "why": lad["recommendation"]["why"], "steps": spent,
            "wall_s": wall, "stop": lad["stop_reason"], "budget": lad.get("budget"),
            "trials": len(study.get_trials()) - 1,
            "rungs": [{k: r.get(k) for k in ("rank", "mean", "best_lr", "effective_rank", "lrs")}
                      for r in lad["rungs"]]}


def markdown(res: dict, args: argparse.Namespace) -> str:
    g, s = res["grid"], res["sweep"]
    share = s["steps"] / g["steps"]
    lrs = ", ".join(f"{x:g}" for x in args.lrs)
    lines = [f"Planted rank k={args.k}; ranks {args.ranks}; learning rates {lrs}; {args.steps} steps a trial; "
             f"search budget {args.budget} per rank ({res['date']}, {res['machine']}).", "",
             "| method | recommended rank | training steps | share of the grid's steps | trials |",
             "|---|---|---|---|---|",
             f"| grid (every rank x every lr, to the end) | r={res['grid_answer']['rank']} | {g['steps']} | 100% | "
             f"{len(g['rows'])} |",
             f"| ranksweep (search + successive halving + margin rule) | r={s['rank']} | {s['steps']} | "
             f"{share:.0%} | {s['trials']} |", "",
             "Best learning rate per rank, grid vs sweep:", "",
             "| rank | grid | sweep | sweep value | effective rank |", "|---|---|---|---|---|"]
    for r in s["rungs"]:
        lines.append(f"| {r['rank']} | {res['grid_answer']['best_lr'].get(r['rank'], '-')} | "
                     f"{r['best_lr']:.2g} | {r['mean']:.4f} | {r['effective_rank']} |" if r["best_lr"] else
                     f"| {r['rank']} | - | - | - | - |")
    lines += ["", f"Sweep stopped: {s['stop']}", f"Sweep: {s['why']}", f"Grid: {res['grid_answer']['why']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rank-method-"))
    ov = task(root, args.k)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores"}
    res["sweep"] = sweep(ov, args, root)
    res["grid"] = grid(ov, args, root)
    res["grid_answer"] = grid_answer(res["grid"]["rows"])
    text = markdown(res, args)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:  # without the per-example evaluations (kept in each grid trial's metrics.json)
        rows = [{k: v for k, v in r.items() if k != "examples"} for r in res["grid"]["rows"]]
        Path(args.json).write_text(json.dumps({**res, "grid": {**res["grid"], "rows": rows}}, indent=2, default=str))


if __name__ == "__main__":
    main()
