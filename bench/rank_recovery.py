"""How often is the rank sweep right, and what does it cost? A suite of planted tasks with known answers.

Each task is a teacher built on the student's own NF4 base (tests/helpers/planted.py
``make_recovery_task``): the base itself (``null``: no rank should beat the smallest), the base plus a
planted rank-k update (k = 1, 2, 4, 8, 16), or a planted update above the ladder's top rank
(``saturated``, k = 64 > 32: the ladder must not stop early, and must say the top rank may still bind).
Every task is built with several teacher/data seeds. Text the teacher samples trains and evaluates the
students; only the planted update separates teacher and student.

Methods, each on the same tasks (``--methods``; a method is a name in METHODS, so a new one joins
without changes to the rest):

- ``ladder``: the default rank ladder, ``+sweep=rank_doubling``'s settings with steps scaled to the task;
- ``single_lr``: one learning rate for every rank, one trial a rank, the way users sweep today;
- ``grid``: every ladder rank x the same 5 learning rates to the end, the margin rule on each rank's best
  learning rate (its step count is computed for every task, it is run where ``--grid`` names the task);
- ``nested``: ``+sweep=rank_quick``: one nested-rank run at the top rank places the knee, three separately
  trained ranks confirm it (``hydra.sweeper.prescreen=nested``). Its prefix curve is compared with the
  ladder's separately trained ranks on the same task and seed: the gap per rank, Kendall's tau, and per
  doubling whether "a confident gain above the margin" is the verdict both ways (``prescreen_rows``).

For each (task, seed, method): the recommended rank, exact or within one doubling, regret (the eval loss
at the recommended rank minus the best rank's, on the method's own curve), training steps and their share
of the grid's, wall time. ``--md`` writes the table and a summary row per method.

    python bench/rank_recovery.py                     # the full suite (about 2 h on 2 CPU cores)
    python bench/rank_recovery.py --quick             # 3 tasks, 1 seed (a slow test runs this)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the planted tasks live with the tests that check them
os.environ.setdefault("OMP_NUM_THREADS", "1")

TASKS = {"k1": 1, "k2": 2, "k4": 4, "k8": 8, "k16": 16, "null": 0, "saturated": 64}
QUICK = ("k2", "null", "saturated")
RANKS = (1, 2, 4, 8, 16, 32)
LRS = (1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2)  # the grid's; the ladder searches the same range (log)
SINGLE_LR = 5e-3  # the single-lr ladder's (trainer=tiny's default)
# The planted update: on o_proj and down_proj of both layers, singular values 1.5. Chosen on a pilot grid so
# that at the bench's steps a rank >= k comes close to the teacher and a rank below k does not (k=4: r=2 1.812,
# r=4 1.780, r=8 1.782 against the teacher's 1.77; k=16: r=8 2.006, r=16 1.903, r=32 1.896).
TARGETS = "o_proj+down_proj"
SCALE = 1.5


@dataclass
class Budget:
    """How long a student trains: scaled so that one ladder takes minutes on 2 CPU cores."""

    steps: int = 400
    eval_every: int = 100
    micro_batch: int = 16


@dataclass
class Result:
    task: str
    seed: int
    k: int
    method: str
    rank: Optional[int] = None
    why: str = ""
    budget: str = ""
    stop: str = ""
    steps: int = 0
    grid_steps: int = 0
    wall_s: float = 0.0
    values: dict[int, float] = field(default_factory=dict)  # rank -> the method's value
    doublings: int = 0  # doublings with an interval
    confident: int = 0  # of them, confident gains (lower bound above the margin)
    error: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)  # "r->2r" -> above | leaning | below
    prefix: dict[int, float] = field(default_factory=dict)  # nested: each prefix's value
    prefix_verdicts: dict[str, str] = field(default_factory=dict)  # nested: the rule's verdicts on the prefixes
    candidate: Optional[int] = None  # nested: the prescreen's candidate rank
    prescreen: str = ""  # nested: confirmed | contradicted | failed

    @property
    def expected(self) -> int:
        """The rank a right answer names: k (the smallest rank for the null task, the top for saturated)."""
        if self.k == 0:
            return RANKS[0]
        return min(self.k, RANKS[-1])

    @property
    def exact(self) -> bool:
        return self.rank == self.expected

    @property
    def within_one(self) -> bool:
        return self.rank is not None and abs(math.log2(self.rank) - math.log2(self.expected)) <= 1

    @property
    def regret(self) -> Optional[float]:
        if self.rank is None or self.rank not in self.values:
            return None
        return self.values[self.rank] - min(self.values.values())


def common(b: Budget) -> list[str]:
    return ["trainer=tiny", f"trainer.max_steps={b.steps}", f"trainer.eval_every={b.eval_every}",
            f"trainer.micro_batch={b.micro_batch}", "trainer.schedule=linear", "lora.dropout=0", "logger=none",
            f"hydra.sweeper.start_rank={RANKS[0]}", f"hydra.sweeper.max_rank={RANKS[-1]}"]


def _lr_range() -> str:
    return f"tag(log, interval({min(LRS)}, {max(LRS)}))"


# Each method: the overrides of its `ranksweep -m` run on top of the task's and common().
METHODS: dict[str, Callable[[Budget], list[str]]] = {
    "ladder": lambda b: ["+sweep=rank_doubling", f"hydra.sweeper.search.trainer.lr={_lr_range()}"],
    "single_lr": lambda b: [f"trainer.lr={SINGLE_LR}", "hydra.sweeper.seeds_per_rank=1"],
    "nested": lambda b: ["+sweep=rank_quick", f"hydra.sweeper.search.trainer.lr={_lr_range()}"],
}


def _study_steps(storage: Path, study: str) -> tuple[int, int]:
    """Training steps every trial ran (a pruned trial its steps so far) and the number of trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{storage}").get_trials()
    spent = 0
    for t in trials:
        if int(t.user_attrs.get("rank", 0) or 0) == 0:
            continue
        spent += int(t.user_attrs.get("steps") or max(t.intermediate_values or {0: 0}))
    return spent, len(trials)


def _verdicts(lad: dict) -> tuple[int, int]:
    """Doublings the stop rule judged, and how many it called confident gains: the summary's own verdicts."""
    judged = [d for d in lad.get("doublings") or [] if d.get("verdict")]
    return len(judged), sum(d["verdict"] == "above" for d in judged)


def _read(res: Result, lad: dict) -> None:
    """What a result keeps of its ladder's summary (``Ladder.to_dict``)."""
    rec = lad.get("recommendation") or {}
    res.rank, res.why = rec.get("rank"), rec.get("why", "")
    res.budget, res.stop = lad.get("budget") or "", lad.get("stop_reason") or ""
    res.values = {int(r["rank"]): float(r["mean"]) for r in lad["rungs"] if r.get("mean") is not None}
    res.doublings, res.confident = _verdicts(lad)
    res.verdicts = {f"{d['from']}->{d['to']}": d["verdict"] for d in lad.get("doublings") or [] if d.get("verdict")}
    pre = lad.get("prescreen") or {}
    res.prefix = {int(k): float(v) for k, v in (pre.get("values") or {}).items()}
    res.prefix_verdicts = {f"{d['from']}->{d['to']}": d["verdict"] for d in pre.get("doublings") or []
                           if d.get("verdict")}
    res.candidate, res.prescreen = pre.get("candidate"), pre.get("verdict") or ""


def run_method(method: str, task: str, seed: int, ov: list[str], b: Budget, work: Path, cache: Path) -> Result:
    res = Result(task, seed, TASKS[task], method, grid_steps=len(RANKS) * len(LRS) * b.steps)
    folder = work / f"{task}-s{seed}-{method}"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "ranksweep"), "-m", *ov, *common(b), *METHODS[method](b),
           f"hydra.sweeper.study_name={method}"]
    env = dict(os.environ, RANKSWEEP_CACHE=str(cache), WANDB_MODE="disabled")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    res.wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        res.error = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        return res
    doc = json.loads((folder / "outputs" / "sweeps" / method / "sweep_summary.json").read_text())
    (lad,) = doc["ladders"]
    _read(res, lad)
    res.steps, _ = _study_steps(folder / "outputs" / "ranksweep.db", method)
    return res


# The grid trains in this process with the process-wide cached base, which one peft wrap at a time may use.
_GRID_LOCK = threading.Lock()


def run_grid(task: str, seed: int, ov: list[str], b: Budget, work: Path, cache: Path) -> Result:
    with _GRID_LOCK:
        return _run_grid(task, seed, ov, b, work, cache)


def _run_grid(task: str, seed: int, ov: list[str], b: Budget, work: Path, cache: Path) -> Result:
    """Every rank at every learning rate to the end in this process (the base loaded once); the margin rule
    (the default settings) on each rank's best learning rate."""
    from ranksweep.compose import compose
    from ranksweep.config import to_run_config
    from ranksweep.job import cached_base
    from ranksweep.sweep.reader import spec_of
    from ranksweep.sweep.rules import Step
    from ranksweep.sweep.settings import SweepSettings
    from ranksweep.sweep.stats import Examples
    from ranksweep.trial import run_trial

    res = Result(task, seed, TASKS[task], "grid", grid_steps=len(RANKS) * len(LRS) * b.steps)
    t0 = time.perf_counter()
    best: dict[int, Any] = {}
    for r in RANKS:
        for lr in LRS:
            run = to_run_config(compose([*ov, *common(b)[:-2], f"lora.r={r}", f"trainer.lr={lr}",
                                         f"cache_dir={cache}"]))
            out = work / f"{task}-s{seed}-grid" / f"r{r}-lr{lr:g}"
            got = run_trial(run, out, base_loader=lambda run=run: cached_base(run))
            res.steps += int(got.metrics["steps"])
            if r not in best or got.objective < best[r].objective:
                best[r] = got
    steps = []
    for r, got in sorted(best.items()):
        ex = got.metrics["eval_examples"]
        steps.append(Step(r, got.objective, Examples.of([ex["loss"]], ex["tokens"], fingerprint=ex["fingerprint"]),
                          [got.objective]))
    rule = spec_of(SweepSettings(start_rank=RANKS[0], max_rank=RANKS[-1]), [("default", ())]).rule
    # One seed per cell: the grid's intervals cover its eval examples only (known_noise=0), as a reference.
    rule = dataclasses.replace(rule, known_noise=0.0)
    rec = rule.recommend(steps, None)
    res.rank, res.why = rec.rank, rec.why
    res.values = {r: float(g.objective) for r, g in best.items()}
    res.wall_s = time.perf_counter() - t0
    return res


def logged(log: Path) -> list[tuple[Result, Optional[int]]]:
    """The results appended to ``log`` (work/results.jsonl), each with the steps a trial it ran at; of a run
    logged twice (resumed after a method change), the last."""
    out: dict[tuple[str, str, int, Optional[int]], tuple[Result, Optional[int]]] = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        r["values"] = {int(k): v for k, v in r["values"].items()}
        r["prefix"] = {int(k): v for k, v in (r.get("prefix") or {}).items()}
        steps = r.pop("budget_steps", None)
        out[(r["method"], r["task"], r["seed"], steps)] = (Result(**r), steps)
    return list(out.values())


def unfinished(work: Path, res: Result) -> bool:
    """Whether this checkout would train more in a logged sweep when resumed (a method change that adds trials
    to a finished ladder, such as hydra.sweeper.resolve_seeds): such a run is resumed, not skipped. A setting
    the study's record lacks is read at this checkout's default, as a resumed sweep records it."""
    from dataclasses import MISSING, fields

    import optuna

    from ranksweep.sweep.reader import read_ladders, spec_of_study
    from ranksweep.sweep.settings import SweepSettings

    db = work / f"{res.task}-s{res.seed}-{res.method}" / "outputs" / "ranksweep.db"
    if res.method == "grid" or res.error or not db.is_file():
        return False
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=res.method, storage=f"sqlite:///{db}")
    defaults = {f.name: f.default for f in fields(SweepSettings) if f.default is not MISSING}
    return not all(lad.done for lad in read_ladders(study.get_trials(deepcopy=False), spec_of_study(study, defaults)))


def reread(work: Path, log: Path, args: argparse.Namespace) -> int:
    """The finished results in ``log``, each sweep's study read again by this checkout's reader (the stop rule,
    the recommendation and the budget verdict as they are now; the trials as they ran)."""
    import optuna

    from ranksweep.sweep.reader import read_study

    results = []
    for res, _ in logged(log):
        db = work / f"{res.task}-s{res.seed}-{res.method}" / "outputs" / "ranksweep.db"
        if res.method != "grid" and not res.error and db.is_file():
            study = optuna.load_study(study_name=res.method, storage=f"sqlite:///{db}")
            (lad,) = read_study(study)
            doc = lad.to_dict()
            rec = doc.get("recommendation") or {}
            if rec.get("rank") != res.rank:
                print(f"{res.task} s{res.seed} {res.method}: r={res.rank} as run, r={rec.get('rank')} read again",
                      flush=True)
            values = res.values
            _read(res, doc)
            res.values = values or res.values  # a pruned rank's value stays as run
        results.append(res)
    head = (f"read again {time.strftime('%Y-%m-%d')} from {log} ({len(results)} results; {platform.machine()} "
            f"{os.cpu_count()} CPU cores)")
    return write(head, results, args)


def write(head: str, results: list[Result], args: argparse.Namespace) -> int:
    """Print the tables; write them to ``--md`` and the results to ``--json`` when given."""
    pre = prescreen_rows(results)
    text = "\n".join([head, "", *summary_rows(results), "", *table_rows(results), *(["", *pre] if pre else [])]) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"head": head, "results": [asdict(r) for r in results]}, indent=1))
    return 0


def summary_rows(results: list[Result]) -> list[str]:
    rows = ["| method | exact | within one doubling | null: smallest rank | null: confident gains | "
            "saturated: top rank | mean regret | share of the grid's steps | wall (median) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == method and not r.error]
        planted = [r for r in rs if 0 < r.k <= RANKS[-1]]
        null = [r for r in rs if r.k == 0]
        sat = [r for r in rs if r.k > RANKS[-1]]
        regrets = [r.regret for r in rs if r.regret is not None]
        share = sum(r.steps for r in rs) / max(sum(r.grid_steps for r in rs), 1)
        walls = sorted(r.wall_s for r in rs)
        rows.append(f"| {method} | {sum(r.exact for r in planted)}/{len(planted)} | "
                    f"{sum(r.within_one for r in planted)}/{len(planted)} | {sum(r.exact for r in null)}/{len(null)} | "
                    f"{sum(r.confident for r in null)} of {sum(r.doublings for r in null)} doublings | "
                    f"{sum(r.exact for r in sat)}/{len(sat)} | "
                    f"{(sum(regrets) / len(regrets)) if regrets else float('nan'):.4f} | {share:.0%} | "
                    f"{walls[len(walls) // 2] if walls else 0:.0f} s |")
    return rows


def prescreen_rows(results: list[Result]) -> list[str]:
    """Each nested run's prefix curve against the separately trained ranks of the same task and seed (the
    ladder's; the grid's where it ran): the gap per rank (prefix - separate), Kendall's tau across the ranks
    both have, and the doublings judged both ways whose verdict ("a confident gain above the margin") agrees."""
    from ranksweep.sweep.prescreen import kendall_tau

    rows = ["| task | seed | vs | candidate | prescreen | recommended | gap per rank (prefix - separate) | "
            "Kendall tau | same verdict |", "|---|---|---|---|---|---|---|---|---|"]
    taus: list[float] = []
    same = judged = 0
    for r in results:
        if r.method != "nested" or r.error or not r.prefix:
            continue
        for other in ("ladder", "grid"):
            ref = next((x for x in results if x.method == other and x.task == r.task and x.seed == r.seed
                        and not x.error), None)
            if ref is None:
                continue
            shared = [k for k in sorted(r.prefix) if k in ref.values]
            tau = kendall_tau([r.prefix[k] for k in shared], [ref.values[k] for k in shared])
            both = [d for d in ref.verdicts if d in r.prefix_verdicts]
            agree = sum((r.prefix_verdicts[d] == "above") == (ref.verdicts[d] == "above") for d in both)
            if other == "ladder":
                taus += [tau] if tau is not None else []
                same, judged = same + agree, judged + len(both)
            gaps = ", ".join(f"r={k} {r.prefix[k] - ref.values[k]:+.3f}" for k in shared)
            rows.append(f"| {r.task} | {r.seed} | {other} | r={r.candidate} | {r.prescreen} | r={r.rank} | {gaps} | "
                        f"{'-' if tau is None else f'{tau:+.2f}'} | {agree}/{len(both)} |")
    if len(rows) == 2:
        return []
    mean = sum(taus) / len(taus) if taus else float("nan")
    return rows + ["", f"Against the ladder: mean Kendall tau {mean:+.2f} over {len(taus)} runs; the same verdict on "
                       f"{same} of {judged} doublings judged both ways."]


def table_rows(results: list[Result]) -> list[str]:
    rows = ["| task | seed | k | method | recommended | exact | within one | regret | steps | share | wall s | "
            "budget-bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            rows.append(f"| {r.task} | {r.seed} | {r.k} | {r.method} | failed: {r.error} | | | | | | | |")
            continue
        rows.append(f"| {r.task} | {r.seed} | {r.k} | {r.method} | r={r.rank} | {'yes' if r.exact else 'no'} | "
                    f"{'yes' if r.within_one else 'no'} | {r.regret if r.regret is not None else float('nan'):.4f} | "
                    f"{r.steps} | {r.steps / max(r.grid_steps, 1):.0%} | {r.wall_s:.0f} | "
                    f"{'yes' if 'bound by the training budget' in r.budget else ''} |")
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"tasks {', '.join(QUICK)}, seed 0, the ladder only")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None, help=f"of {', '.join(METHODS)}")
    ap.add_argument("--grid", nargs="*", default=["k4", "null"], help="tasks whose grid is run for real")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    ap.add_argument("--steps", type=int, default=Budget.steps)
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the runs here (default: a temp folder); run again with the same --work, it skips what "
                         "finished and resumes a sweep this checkout would train further (after a method change)")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reread", action="store_true",
                    help="train nothing: read each finished ladder and single_lr study in --work again with this "
                         "checkout's rules (after a change to the verdict), and write the tables of what is there")
    args = ap.parse_args(argv)
    tasks = list(args.tasks or (QUICK if args.quick else TASKS))
    seeds = list(args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2]))
    methods = list(args.methods or (["ladder"] if args.quick else list(METHODS)))
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: {m!r} is not one of {', '.join(METHODS)}")
    b = Budget(steps=args.steps, eval_every=max(1, args.steps // 4))
    work = args.work or Path(tempfile.mkdtemp(prefix="rank-recovery-"))
    cache = work / "cache"
    if args.reread:
        return reread(work, work / "results.jsonl", args)
    from helpers.planted import make_recovery_task

    t_start = time.perf_counter()
    overrides = {}
    for task in tasks:
        for seed in seeds:
            ov = make_recovery_task(work / "tasks" / f"{task}-s{seed}", TASKS[task], seed, cache, scale=SCALE,
                                    targets=TARGETS)
            overrides[(task, seed)] = [f"{k}={v}" for k, v in ov.items()]
    # Each result is appended to work/results.jsonl as it lands: a rerun with the same --work skips what is there,
    # and resumes a sweep this checkout would train further (its wall time adds to the first run's).
    log = work / "results.jsonl"
    done = {(r.method, r.task, r.seed, steps): r for r, steps in (logged(log) if log.is_file() else [])}

    def run(method: str, task: str, seed: int) -> Result:
        got = done.get((method, task, seed, b.steps))
        before = got.wall_s if got is not None and unfinished(work, got) else None
        if got is None or before is not None:
            got = (run_grid(task, seed, overrides[(task, seed)], b, work, cache) if method == "grid" else
                   run_method(method, task, seed, overrides[(task, seed)], b, work, cache))
            got.wall_s += before or 0.0
            with log.open("a") as fh:
                fh.write(json.dumps({**asdict(got), "budget_steps": b.steps}) + "\n")
            print(f"{task} s{seed} {method}: r={got.rank} {got.error}", flush=True)
        return got

    grid = [("grid", t, seeds[0]) for t in args.grid if t in tasks and not args.quick]  # after the first seed
    jobs = [(m, t, s) for s in seeds[:1] for t in tasks for m in methods] + grid
    jobs += [(m, t, s) for s in seeds[1:] for t in tasks for m in methods]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: run(*job), jobs))
    wall = time.perf_counter() - t_start
    head = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU cores, "
            f"{'--quick' if args.quick else 'full suite'}: {len(tasks)} tasks x {len(seeds)} seed(s); ranks "
            f"{list(RANKS)}; {b.steps} steps a trial, micro-batch {b.micro_batch}; wall {wall / 60:.1f} min")
    return write(head, results, args)


if __name__ == "__main__":
    raise SystemExit(main())
