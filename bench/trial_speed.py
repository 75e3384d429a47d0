"""Trial speed: the plain QLoRA loop against a ranksweep trial, same model, data, r, seq and batch.

    python bench/trial_speed.py cpu                 # tiny Llama + SmolLM2-135M, runs anywhere (~15 min on 2 cores)
    python bench/trial_speed.py gpu                 # Llama-3.2-1B / Llama-3.1-8B shapes, random init, one GPU
    python bench/trial_speed.py cpu --cases smollm2-task --md out.md
    python bench/trial_speed.py overhead            # make train's trial at r=8,16,32 in one worker: overhead share

(a) ``baseline`` is the hand-written loop of ``../shared/reference/baseline_loop.py`` (NF4 + double
quant, ``prepare_model_for_kbit_training``, LoRA on all linear layers with alpha = 2r and no dropout,
SDPA, AdamW lr 1e-4 on the adapters, bf16 autocast on CUDA, fp32 on CPU), made device-generic.
(b) ``ranksweep`` is :func:`ranksweep.run_trial` on the same model folder and rows, with its defaults
(packing, chunked loss, kernels=auto, gradient_checkpointing as the variant says). Every
(case, variant) runs in its own process, so its peak memory is its own: CUDA ``max_memory_allocated``,
or on CPU the peak resident set minus the resident set before the model was loaded.

Two kinds of rows: ``full`` rows are all ``seq`` tokens long (the reference's workload: nothing to
pack), ``task`` rows are the cmudict examples ``make train`` uses (short, uneven: the baseline pads
each batch, ranksweep packs). Tokens/s counts non-padding tokens over the steps after the warm-up
ones, by the same rule for both. The last table column compares ranksweep's memory estimate with
the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 2

# name: (model, bits, r, seq, micro_batch, rows, timed steps, [variants])
# A variant is baseline[:ckpt] or ranksweep[:modifier...]: ckpt (checkpoint every layer, as the
# baseline does), budget (trainer.memory_limit_gb = the baseline's measured peak: ranksweep spends
# at most that memory), nocache (no dequantized copies), plain (no packing, the model's own loss,
# no copies: ranksweep's Trainer path alone), compile (torch.compile).
CASES = {
    "tiny-full": ("tiny:llama", 4, 16, 128, 8, "full", 20, ["baseline", "ranksweep", "ranksweep:plain"]),
    "smollm2-full": ("smollm2", 4, 16, 256, 4, "full", 5,
                     ["baseline", "ranksweep", "ranksweep:plain", "ranksweep:nocache", "ranksweep:ckpt",
                      "ranksweep:compile"]),
    "smollm2-task": ("smollm2", 4, 16, 128, 8, "task", 6, ["baseline", "ranksweep", "ranksweep:plain"]),
    "1b-2048x4": ("1b", 4, 16, 2048, 4, "full", 6,
                  ["baseline:ckpt", "ranksweep:budget", "ranksweep:ckpt", "ranksweep:plain:ckpt", "ranksweep"]),
    "1b-2048x1": ("1b", 4, 16, 2048, 1, "full", 6, ["baseline:ckpt", "ranksweep:budget", "ranksweep"]),
    "8b-2048x1": ("8b", 4, 16, 2048, 1, "full", 5, ["baseline:ckpt", "ranksweep:budget", "ranksweep"]),
    "8b-2048x4": ("8b", 4, 16, 2048, 4, "full", 5,
                  ["baseline:ckpt", "ranksweep:budget", "ranksweep:ckpt", "ranksweep"]),
}
MODES = {"cpu": ["tiny-full", "smollm2-full", "smollm2-task"], "overhead": [],
         "gpu": ["1b-2048x4", "1b-2048x1", "8b-2048x1", "8b-2048x4"]}


# ---------------------------------------------------------------------------------------------
# Models and rows
# ---------------------------------------------------------------------------------------------


def gpu_shape(name: str):
    from transformers import LlamaConfig

    if name == "1b":  # Llama-3.2-1B
        return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                           tie_word_embeddings=True, rope_theta=500000.0)
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,  # 3.1-8B
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                       tie_word_embeddings=False, rope_theta=500000.0)


def model_folder(model: str, cache: Path) -> tuple[str, str]:
    """(folder, ranksweep model config name) for a case's model, prepared once."""
    from ranksweep.config import ModelConfig
    from ranksweep.models import resolve_model_path, tiny_tokenizer

    if model.startswith("tiny:"):
        return resolve_model_path(ModelConfig(name="tiny", id=model, family="llama"), cache), "tiny_llama"
    if model == "smollm2":
        cfg = ModelConfig(name="smollm2", id="embedded:smollm2-135m-instruct", family="llama")
        return resolve_model_path(cfg, cache), "smollm2_135m_instruct"
    folder = cache / "bench-models" / f"llama-{model}"
    if not (folder / "config.json").exists():
        import torch
        from transformers import LlamaForCausalLM

        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            m = LlamaForCausalLM(gpu_shape(model))
        torch.set_default_dtype(torch.float32)
        m.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)  # run_trial loads a tokenizer; ids stay < 128256
        del m
    return str(folder), "tiny_llama"


def full_rows_file(seq: int, n: int, root: Path) -> Path:
    """JSONL texts long enough to be cut to exactly ``seq`` tokens by any tokenizer (text mode)."""
    import random

    rng = random.Random(0)
    words = ["alpha", "river", "stone", "quiet", "number", "seven", "garden", "light", "paper", "blue"]
    path = root / f"full-{seq}.jsonl"
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(seq * 2))}) + "\n")
    return path


def compose(overrides: list[str]):
    from ranksweep.compose import compose as compose_config

    return compose_config(overrides)  # the config tree as the command composes it


def trial_overrides(case: str, variant: str, folder: str, model_cfg: str, root: Path, device: str) -> list[str]:
    model, bits, r, seq, bs, rows, steps, _ = CASES[case]
    ov = [f"model={model_cfg}", f"model.id={folder}", "model.variant=base", "quant=nf4" if bits == 4 else "quant=none",
          f"lora.r={r}", "lora.alpha_rule=two_r", "lora.dropout=0.0", "lora.targets=all_linear", "logger=none",
          f"trainer.device={device}", f"trainer.max_steps={steps + WARMUP}", f"trainer.micro_batch={bs}",
          f"trainer.max_seq_len={seq}", "trainer.eval_every=100000", f"trainer.eval_batch={bs}", "trainer.lr=1e-4",
          "trainer.schedule=constant", "trainer.warmup_ratio=0.0", "trainer.weight_decay=0.0",
          "data.metric_examples=0"]
    if rows == "full":
        n = bs * (steps + WARMUP) + 2 * bs
        ov += ["data=jsonl", f"data.path={full_rows_file(seq, n, root)}", "data.text_column=text",
               f"data.eval_size={2 * bs}"]
    else:
        ov += ["data=cmudict", "data.max_examples=2000", "data.eval_size=32",
               "model.variant=instruct" if model_cfg == "smollm2_135m_instruct" else "model.variant=base"]
    mods = variant.split(":")[1:]
    if "ckpt" in mods:
        ov.append("trainer.gradient_checkpointing=true")
    elif device == "cpu" or "plain" in mods:
        ov.append("trainer.gradient_checkpointing=false")
    if "compile" in mods:
        ov.append("trainer.compile=true")
    if "plain" in mods:
        ov += ["trainer.packing=false", "trainer.loss_impl=plain", "trainer.dequant_cache=false"]
    if "nocache" in mods:
        ov.append("trainer.dequant_cache=false")
    if "budget" in mods:
        ov.append(f"trainer.memory_limit_gb={float(os.environ['RS_BENCH_BUDGET_GB'])}")
    return ov


# ---------------------------------------------------------------------------------------------
# One measurement (in its own process)
# ---------------------------------------------------------------------------------------------


class TensorPeak:
    """Peak bytes of live CPU tensor storages while active (a TorchDispatchMode), for the CPU estimate check.

    The resident set also holds the libraries, the allocator's free lists and the loaded files;
    what the estimator predicts is tensor memory, which this counts (storages allocated while it
    is active, freed when their last reference goes).
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                from torch.utils._pytree import tree_map

                tree_map(outer._track, out)
                return out

        self.mode = Mode()
        self.live: dict[int, int] = {}
        self.cur = self.peak = 0

    def _track(self, t):
        import weakref

        import torch

        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            key = st.data_ptr()
            if key and key not in self.live:
                self.live[key] = st.nbytes()
                self.cur += self.live[key]
                self.peak = max(self.peak, self.cur)
                weakref.finalize(st, self._free, key)
        return t

    def _free(self, key: int) -> None:
        self.cur -= self.live.pop(key, 0)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak(device: str, rss0: float) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6 - rss0


def measure(case: str, variant: str, device: str, root: Path) -> dict:
    import torch

    from ranksweep.config import to_run_config
    from ranksweep.models import torch_dtype

    cache = Path(os.environ.get("RANKSWEEP_CACHE", str(Path.home() / ".cache" / "ranksweep")))
    folder, model_cfg = model_folder(CASES[case][0], cache)
    cfg = compose(trial_overrides(case, variant, folder, model_cfg, root, device))
    import bitsandbytes  # noqa: F401  (libraries in the resident set before the model, for both)
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401

    rss0 = _rss_gb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    impl = variant.split(":")[0]
    fn = run_baseline if impl == "baseline" else run_ranksweep
    tensors = None
    if device == "cpu" and os.environ.get("RS_BENCH_TENSORS") == "1":  # a memory run: timings are not used
        with TensorPeak() as tensors:
            times, tokens, extra = fn(cfg, variant, device, root)
    else:
        times, tokens, extra = fn(cfg, variant, device, root)
    peak = _peak(device, rss0)
    t, n = times[WARMUP:], tokens[WARMUP:]
    out = {"case": case, "variant": variant, "device": device, "tok_s": sum(n) / sum(t), "step_s": sum(t) / len(t),
           "peak_gb": peak, "steps": len(t), "dtype": str(torch_dtype(to_run_config(cfg).quant.compute_dtype,
                                                                          device)).replace("torch.", "")}
    if tensors is not None:
        out["tensor_peak_gb"] = tensors.peak / 1e9
    out.update(extra)
    return out


def run_baseline(cfg, variant: str, device: str, root: Path):
    """The reference loop, step for step (device-generic), on the rows the trial sees."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ranksweep import data as data_mod
    from ranksweep.config import to_run_config
    from ranksweep.models import load_tokenizer, resolve_model_path, torch_dtype

    run = to_run_config(cfg)
    dtype = torch_dtype(run.quant.compute_dtype, device)
    path = resolve_model_path(run.model, os.path.expanduser(run.cache_dir))
    kw = dict(dtype=dtype, device_map=device, attn_implementation="sdpa")
    if run.quant.bits == 4:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    m = AutoModelForCausalLM.from_pretrained(path, **kw)
    ckpt = variant.endswith(":ckpt")
    m = peft.prepare_model_for_kbit_training(m, use_gradient_checkpointing=ckpt)
    m = peft.get_peft_model(m, peft.LoraConfig(r=run.lora.r, lora_alpha=2 * run.lora.r, target_modules="all-linear",
                                               task_type="CAUSAL_LM"))
    m.config.use_cache = False
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    tok = load_tokenizer(path, run.model)
    examples = data_mod.load_examples(run.data)
    train_ex, _ = data_mod.split_examples(examples, run.data.eval_size, run.data.seed)
    rows = data_mod.tokenize_examples(train_ex, tok, run.model.variant, run.data, run.trainer.max_seq_len)
    collate = data_mod.CausalCollator(tok)
    bs = run.trainer.micro_batch
    times, tokens = [], []
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    for i in range(run.trainer.max_steps):
        batch = {k: v.to(device) for k, v in collate([rows[(i * bs + j) % len(rows)] for j in range(bs)]).items()}
        _sync(device)
        t = time.perf_counter()
        with auto:
            loss = m(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
        tokens.append(int(batch["attention_mask"].sum()))
    return times, tokens, {"loss": float(loss)}


def run_ranksweep(cfg, variant: str, device: str, root: Path):
    from transformers import TrainerCallback

    from ranksweep.trial import run_trial

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times, self.tokens, self.t, self.seen = [], [], 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            _sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            self.times.append(time.perf_counter() - self.t)
            seen = int(state.num_input_tokens_seen or 0)
            self.tokens.append(seen - self.seen)
            self.seen = seen

    timer = StepTimer()
    out = root / "trials" / f"{int(time.time() * 1000)}"
    res = run_trial(cfg, out, callbacks=[timer])
    m = res.metrics
    return timer.times, timer.tokens, {
        "estimated_gb": m.get("estimated_peak_gb"), "grad_ckpt": m.get("gradient_checkpointing"),
        "kernels": m.get("kernels"), "wall_s": m["wall_s"], "train_s": m["train_s"], "load_s": m["load_s"],
        "overhead_s": m["overhead_s"], "overhead_share": m["overhead_share"],
        "ckpt_layers": m.get("checkpointed_layers"), "cached_layers": m.get("dequant_cached_layers"),
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def run_case(case: str, variant: str, device: str, root: Path, timeout: int, budget: float | None,
             memory_run: bool = False) -> dict:
    cmd = [sys.executable, __file__, "_one", case, variant, device, str(root)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               HF_HUB_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if memory_run:
        env["RS_BENCH_TENSORS"] = "1"
    if "budget" in variant.split(":"):
        if budget is None:
            return {"case": case, "variant": variant, "error": "no baseline peak to budget against"}
        env["RS_BENCH_BUDGET_GB"] = str(budget)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "variant": variant, "error": f"timed out after {timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            row = json.loads(line[7:])
            row["process_s"] = time.perf_counter() - t0
            return row
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"case": case, "variant": variant, "error": " | ".join(tail)[-400:]}


def median_row(rows: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one for an even count); errors only if all failed."""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["tok_s"])
    if not ok:
        return rows[0]
    row = dict(ok[(len(ok) - 1) // 2])
    row["tok_s_runs"] = [round(r["tok_s"], 1) for r in ok]
    return row


def summarize(runs: list[dict], case: str, variants: list[str]) -> list[dict]:
    """One row per variant: the median timed run, paired tokens/s ratios, the memory run's tensor peak."""
    rows = []
    timed = [r for r in runs if r["case"] == case and r["rep"] >= 0 and "error" not in r]
    base = {r["rep"]: r["tok_s"] for r in timed if r["variant"].startswith("baseline")}
    for v in variants:
        row = median_row([r for r in runs if r["case"] == case and r["variant"] == v and r["rep"] >= 0])
        pairs = sorted(r["tok_s"] / base[r["rep"]] for r in timed if r["variant"] == v and r["rep"] in base)
        if pairs and len(pairs) > 1:
            row["paired"] = pairs[(len(pairs) - 1) // 2] if len(pairs) % 2 else sum(pairs[len(pairs) // 2 - 1:
                                                                                          len(pairs) // 2 + 1]) / 2
            row["paired_runs"] = pairs
        mem = [r for r in runs if r["case"] == case and r["variant"] == v and r["rep"] < 0 and "error" not in r]
        if mem and "error" not in row:
            row["tensor_peak_gb"] = mem[0].get("tensor_peak_gb")
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    base = {r["case"]: r for r in rows if r.get("variant", "").startswith("baseline") and "error" not in r}
    lines = ["| case | variant | tok/s | x baseline | peak GB | x baseline | estimate vs measured GB | ckpt layers | "
             "dequant-cached layers | step s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['variant']} | error: {r['error']} ||||||||")
            continue
        b = base.get(r["case"])
        speed = f"{r['tok_s'] / b['tok_s']:.2f}x" if b else "-"
        if r.get("paired"):  # the median over reps of (this run / the same rep's baseline run)
            speed = f"{r['paired']:.2f}x ({', '.join(f'{x:.2f}' for x in r['paired_runs'])})"
        mem = f"{r['peak_gb'] / b['peak_gb']:.2f}x" if b and b["peak_gb"] > 0 else "-"
        est = "-"
        measured = r.get("tensor_peak_gb") or r["peak_gb"]  # CPU: tensor bytes, not the resident set
        if r.get("estimated_gb"):
            est = f"{r['estimated_gb']:.2f} vs {measured:.2f} ({100 * (r['estimated_gb'] / measured - 1):+.0f}%)"
        ckpt = "all" if r["variant"].endswith(":ckpt") else "off"
        if r.get("ckpt_layers") is not None:
            ckpt = str(r["ckpt_layers"])
        cached = "-" if r.get("cached_layers") is None else str(r["cached_layers"])
        lines.append(f"| {r['case']} | {r['variant']} | {r['tok_s']:,.0f} | {speed} | {r['peak_gb']:.2f} | {mem} | "
                     f"{est} | {ckpt} | {cached} | {r['step_s']:.3f} |")
    return "\n".join(lines)


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def overhead(ranks: list[int], extra: list[str]) -> list[dict]:
    """``make train``'s trial at several ranks in one process, as one sweep worker runs them (base reused)."""
    from ranksweep import job
    from ranksweep.config import to_run_config
    from ranksweep.trial import resolved_config

    rows = []
    with tempfile.TemporaryDirectory(prefix="rs-overhead-") as tmp:
        for r in ranks:
            cfg = compose([f"lora.r={r}", "logger=none", *extra])
            job.run_job(to_run_config(cfg), str(Path(tmp) / f"r{r}"), resolved=resolved_config(cfg))
            m = json.loads((Path(tmp) / f"r{r}" / "metrics.json").read_text())
            rows.append({"r": r, "wall_s": m["wall_s"], "overhead_s": m["overhead_s"], "load_s": m["load_s"],
                         "overhead_share": m["overhead_share"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        case, variant, device, root = sys.argv[2:6]
        print("RESULT " + json.dumps(measure(case, variant, device, Path(root))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--cases", nargs="*", help=f"subset of {', '.join(CASES)}")
    ap.add_argument("--variants", nargs="*", help="subset of each case's variants")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per measurement process")
    ap.add_argument("--repeat", type=int, default=1, help="runs per (case, variant), interleaved; the table shows "
                    "the median tokens/s (CPU timings on a shared machine vary by ~10%%)")
    ap.add_argument("--md", help="write the table (markdown) here")
    ap.add_argument("--json", help="write every run (JSON) here")
    ap.add_argument("--from-json", help="print the table of a previous --json file instead of running")
    args = ap.parse_args()
    device = "cuda" if args.mode == "gpu" else "cpu"
    rows: list[dict] = []
    if args.from_json:
        runs = json.loads(Path(args.from_json).read_text())
        for case in dict.fromkeys(r["case"] for r in runs):
            rows += summarize(runs, case, list(dict.fromkeys(r["variant"] for r in runs if r["case"] == case)))
        reps = len({r["rep"] for r in runs if r["rep"] >= 0})
        print(f"{args.mode} benchmark, from {args.from_json}; median of {reps} interleaved timed run(s) per row\n")
        print(table(rows))
        return
    if args.mode == "overhead":
        got = overhead([8, 16, 32], [])
        lines = ["| trial | r | wall s | overhead s (start, data, load, tokenise, save) | share |",
                 "|---|---|---|---|---|"]
        lines += [f"| {i + 1}{' (loads the base)' if i == 0 else ''} | {g['r']} | {g['wall_s']:.1f} | "
                  f"{g['overhead_s']:.2f} (load {g['load_s']:.2f}) | {100 * g['overhead_share']:.1f}% |"
                  for i, g in enumerate(got)]
        out = f"per-trial overhead, `make train`'s trial in one worker, {machine('cpu')}, {time.strftime('%Y-%m-%d')}"
        out += "\n\n" + "\n".join(lines) + "\n"
        print("\n" + out)
        if args.md:
            Path(args.md).write_text(out)
        return
    import torch

    head = f"{args.mode} benchmark on {machine(device)}, {time.strftime('%Y-%m-%d')}"
    print(head, flush=True)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rs-bench-") as tmp:
        for case in args.cases or MODES[args.mode]:
            variants = [v for v in CASES[case][7] if not args.variants or v in args.variants]
            # CPU: one extra run per variant counts tensor memory (a dispatch mode that slows small ops);
            # the timed runs are interleaved, so a slow minute of the machine hits every variant.
            reps = ([-1] if device == "cpu" else []) + list(range(args.repeat))
            for rep in reps:
                for variant in variants:
                    base = [r for r in runs if r.get("case") == case and r.get("variant", "").startswith("baseline")
                            and "peak_gb" in r and r["rep"] >= 0]
                    budget = min(r["peak_gb"] for r in base) if base else None
                    row = run_case(case, variant, device, Path(tmp), args.timeout, budget, memory_run=rep < 0)
                    row["rep"] = rep
                    runs.append(row)
                    print(json.dumps(row), flush=True)
            rows += summarize(runs, case, variants)
    out = f"{head}; median of {args.repeat} interleaved timed run(s) per row\n\n{table(rows)}\n"
    print("\n" + out)
    if args.md:
        Path(args.md).write_text(out)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    del torch


if __name__ == "__main__":
    main()
