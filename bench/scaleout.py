"""Scale-out benchmark: one rank ladder on the tiny model with 1 vs N local workers.

Each worker is a real `ranksweep -m` process; they share one study on a JournalFileStorage
(or PostgreSQL with --storage). Prints the ladder's wall time per worker count, the
speed-up ratio, and the scheduling overhead per trial: the time a trial spends between
the sweeper creating it and recording its result, minus the job's own run time.

    python bench/scaleout.py                  # 1 vs 3 workers
    python bench/scaleout.py --workers 1 2 3 --max-rank 128
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

import optuna

BIN = str(Path(sys.executable).parent / "ranksweep")


def run(workers: int, root: Path, max_rank: int, storage: str | None, steps: int) -> dict:
    cwd = root / f"w{workers}"
    cwd.mkdir(parents=True, exist_ok=True)
    study = f"bench-w{workers}-{int(time.time())}"
    url = storage or f"journal://{cwd / 'study.log'}"
    args = [BIN, "-m", "model=tiny_llama", "trainer=tiny", f"trainer.max_steps={steps}", "trainer.eval_every=10",
            "data.max_examples=400", "data.eval_size=32", "data.metric_examples=8", "logger=none",
            f"hydra.sweeper.max_rank={max_rank}", "hydra.sweeper.min_gain=0.0", "hydra.sweeper.poll_s=0.5",
            f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}"]
    # One BLAS thread per worker: N workers share the machine's cores.
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RANKSWEEP_CACHE=str(root / "cache"))
    t0 = time.perf_counter()
    procs = [subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err[-2000:]}")
    wall = time.perf_counter() - t0
    from ranksweep.storage import open_storage

    trials = optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=False)).get_trials()
    finished = [t for t in trials if t.datetime_complete and "duration_s" in t.user_attrs]
    overhead = [(t.datetime_complete - t.datetime_start).total_seconds() - float(t.user_attrs["duration_s"])
                for t in finished]
    return {"workers": workers, "wall_s": wall, "trials": len(finished),
            "job_s": sum(float(t.user_attrs["duration_s"]) for t in finished),
            "overhead_per_trial_s": sum(overhead) / max(len(overhead), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--max-rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--storage", default=None, help="a shared Optuna storage URL (default: a journal file)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    # Warm the caches (tiny model, tokenised data) so that no worker count pays for them.
    run(1, root / "warm", 8, None, 1)
    rows = [run(n, root, a.max_rank, a.storage, a.steps) for n in a.workers]
    base = rows[0]
    print(f"cpus={os.cpu_count()}  ladder r=8..{a.max_rank} on tiny_llama, {a.steps} steps per trial")
    print("| workers | trials | wall s | speed-up vs 1 | job s (sum) | overhead/trial s | overhead share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        share = r["overhead_per_trial_s"] * r["trials"] / max(r["job_s"], 1e-9)
        print(f"| {r['workers']} | {r['trials']} | {r['wall_s']:.1f} | {base['wall_s'] / r['wall_s']:.2f}x | "
              f"{r['job_s']:.1f} | {r['overhead_per_trial_s']:.2f} | {share:.1%} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
