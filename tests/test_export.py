"""The best adapter as a deliverable: ``best/`` after a real tiny sweep, ``ranksweep export`` (``--merge``,
``--push-to-hub --dry-run``), the W&B model artifacts read back from the offline runs, and the layout
with several ladders (built by hand, fast).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.run import TINY_SWEEP, Result, env, one_line_error, ranksweep, run_inprocess
from optuna.trial import TrialState

from ranksweep import export
from ranksweep.sweep.results import Job, JobStatus, Ladder, Rung, Trial
from ranksweep.sweep.rules import Recommendation

STUDY = "ex"
WANDB = str(Path(sys.executable).parent / "wandb")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A folder where the tiny sweep ran with offline W&B (outputs/ranksweep.db, outputs/sweeps/ex/)."""
    cwd = tmp_path_factory.mktemp("export")
    proc = ranksweep(cwd, "-m", *TINY_SWEEP, f"hydra.sweeper.study_name={STUDY}", cache=cwd / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


def _export(cwd: Path, *args: str, **extra: str) -> Result:
    """``ranksweep ARGS`` (a subcommand) in this process, with what :func:`helpers.run.env` gives a child: offline
    W&B and the sweep's cache. What is read at import (HF_HOME) needs a process: :func:`ranksweep`."""
    return run_inprocess(cwd, *args, WANDB_MODE="offline", RANKSWEEP_CACHE=str(cwd / "cache"), **extra)


def _summary(cwd: Path) -> dict:
    return json.loads((cwd / "outputs" / "sweeps" / STUDY / "sweep_summary.json").read_text())


def _recommended(cwd: Path) -> tuple[int, Path]:
    """The recommended rank and its trial's folder, as sweep_summary.json records them."""
    (lad,) = _summary(cwd)["ladders"]
    rank = lad["recommendation"]["rank"]
    (rung,) = [r for r in lad["rungs"] if r["rank"] == rank]
    return rank, cwd / rung["output_dirs"][0]


def _records(run_dir: Path, kind: str) -> list[dict]:
    proc = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [rec[kind] for rec in map(json.loads, proc.stdout.splitlines()) if rec.get("type") == kind]


def _model_artifacts(run_dir: Path) -> list[dict]:
    return [a for a in _records(run_dir, "artifact") if a["type"] == "model"]


# ----------------------------------------------------------------------------- after a sweep


@pytest.mark.slow
def test_best_folder_after_a_sweep(swept):
    rank, trial_dir = _recommended(swept)
    best = swept / "outputs" / "sweeps" / STUDY / "best"
    for name in ADAPTER_FILES:
        assert (best / name).read_bytes() == (trial_dir / "adapter" / name).read_bytes(), name
    for name in ("config.yaml", "metrics.json"):
        assert (best / name).read_bytes() == (trial_dir / name).read_bytes(), name
    assert (best / "rank_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (best / "README.md").read_text()
    metrics = json.loads((best / "metrics.json").read_text())
    (lad,) = _summary(swept)["ladders"]
    rung = next(r for r in lad["rungs"] if r["rank"] == rank)
    assert card.startswith("---\nlibrary_name: peft\n")
    assert f"rank {rank} LoRA adapter" in card and f"LoRA rank r={rank}, alpha={metrics['alpha']:g}" in card
    assert "base model: `tiny:llama`" in card and "targets: `all_linear` -> down_proj" in card
    assert "data: name=cmudict" in card and "max_examples=160" in card
    assert f"**{rung['mean']:.4f}** ± {rung['std']:.4f}" in card
    assert lad["recommendation"]["why"] in card
    assert "![rank curve](rank_curve.png)" in card
    for r in lad["rungs"]:  # the curve's table: one row per rank, the recommended one in bold
        cell = f"**{r['rank']}**" if r["rank"] == rank else str(r["rank"])
        assert f"| {cell} | " in card
    if rung.get("gain"):
        assert "gain over the previous rank: " in card and "95% CI" in card

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((best / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(best))
    assert model.peft_config["default"].r == rank


@pytest.mark.parametrize("overrides, aliases", [
    ((), ["r8"]),
    (("trainer.seed=2", "trial.trial_number=5"), ["r8-s2", "trial-5"]),
    (("trial.role=budget", "trainer.seed=0", "trial.trial_number=7"), ["r8-longer", "trial-7"]),
    (("trial.role=prescreen", "trial.nested_ranks=[2,4,8]", "trial.trial_number=1"), ["r8-nested", "trial-1"]),
])
def test_an_adapters_aliases_name_its_rank_seed_and_role(compose_cfg, overrides, aliases):
    """What a trial's W&B model artifact is aliased: its rank, then a further seed, or the budget check's
    longer run (the tiny sweep below runs no budget check: test_noise's sweep does)."""
    from ranksweep.config import to_run_config
    from ranksweep.tracking import adapter_aliases

    assert adapter_aliases(to_run_config(compose_cfg("lora.r=8", *overrides))) == aliases


@pytest.mark.slow
def test_wandb_artifacts_read_back(swept):
    """Each trained trial's run holds its adapter (type model, r<rank> and trial-N); the summary run holds the
    recommended one again, aliased best, with the same digest (W&B keeps one version and adds the alias)."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{swept / 'outputs' / 'ranksweep.db'}")
    name = f"{STUDY}-tiny_llama-all_linear-nf4"
    digests = {}
    for t in study.get_trials():
        arts = _model_artifacts(Path(t.user_attrs["wandb_run"]))
        if t.user_attrs["role"] == "base" or t.state.name != "COMPLETE":
            assert arts == []  # an untrained adapter is not a model; a pruned trial saved none
            continue
        (art,) = arts
        rank, seed, role = t.params["rank"], t.user_attrs["seed"], t.user_attrs["role"]
        alias = f"r{rank}-longer" if role == "budget" else f"r{rank}-s{seed}" if seed else f"r{rank}"
        assert art["name"] == name and alias in art["aliases"] and f"trial-{t.number}" in art["aliases"]
        files = {e["path"]: Path(e["local_path"]) for e in art["manifest"]["contents"]}
        adapter = Path(t.user_attrs["output_dir"]) / "adapter"
        assert (swept / adapter / "adapter_model.safetensors").samefile(files["adapter_model.safetensors"])
        assert json.loads(art["metadata"])["r"] == rank
        if alias == f"r{rank}":  # seed 0 at the sweep's steps: the adapter a recommendation names
            digests[rank] = art["digest"]
    rank, _ = _recommended(swept)
    (summary_run,) = (swept / "outputs" / "sweeps" / STUDY / "wandb").glob("offline-run-*")
    (best,) = _model_artifacts(summary_run)
    assert best["name"] == name and {"best", f"r{rank}"} <= set(best["aliases"])
    assert best["digest"] == digests[rank]


@pytest.mark.slow
def test_export_merge_gives_the_logits_of_base_plus_adapter(swept, tmp_path):
    out = tmp_path / "exported"
    proc = _export(swept, "export", STUDY, "--out", str(out), "--merge")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"-> {out}" in proc.stdout and f"merged: {out / 'merged'} (float32" in proc.stdout
    merged = out / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config
    ids = [[5, 40, 41, 42, 17, 60, 61, 9, 33, 70]]
    # Plain transformers, in a fresh process: no peft, no ranksweep.
    code = ("import json, sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"m = AutoModelForCausalLM.from_pretrained({str(merged)!r}).eval(); AutoTokenizer.from_pretrained("
            f"{str(merged)!r}); print(json.dumps(m(torch.tensor({ids})).logits.tolist()))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    merged_logits = torch.tensor(json.loads(run.stdout.strip().splitlines()[-1]))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    with torch.no_grad():
        plain = base(torch.tensor(ids)).logits
        ref = PeftModel.from_pretrained(base, str(out)).eval()(torch.tensor(ids)).logits
    assert not torch.allclose(plain, ref, atol=1e-4)  # the adapter changes the model
    torch.testing.assert_close(merged_logits, ref, atol=1e-4, rtol=1e-4)
    assert "# ex: rank " in (merged / "README.md").read_text()


@pytest.mark.slow
def test_push_to_hub_dry_run_prints_and_keeps_the_token(swept, tmp_path):
    secret = "hf_NotARealTokenButSecret123"
    out = tmp_path / "hub"
    proc = _export(swept, "export", STUDY, "--out", str(out), "--push-to-hub", "my-org/tiny-ranks", "--private",
                   "--dry-run", HF_TOKEN=secret, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert secret not in text and secret not in proc.stderr
    assert "repo:   my-org/tiny-ranks (model, private)" in text and "token:  from HF_TOKEN" in text
    for name in (*ADAPTER_FILES, "README.md", "config.yaml", "metrics.json", "rank_curve.png"):
        assert f"    {name}  " in text, name
    assert "model card (README.md):" in text and "    # ex: rank " in text


@pytest.mark.slow
def test_push_without_a_token_is_one_line(swept, tmp_path):
    proc = ranksweep(swept, "export", STUDY, "--out", str(tmp_path / "o"), "--push-to-hub", "my-org/x",
                     cache=swept / "cache", HF_HOME=str(tmp_path / "hf"), HF_TOKEN="")
    assert "no Hugging Face token" in one_line_error(proc)


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["export", "nope"], ["study 'nope' not found"]),
    (["export", STUDY, "--ladder", "lora.r=4"], ["--ladder", "not a ladder of this study"]),
    (["export", STUDY, "--push-to-hub", "not a repo", "--dry-run"], ["not a repo id"]),
    (["export", STUDY, "--dry-run"], ["--push-to-hub"]),
])
def test_export_bad_input_is_one_line(swept, tmp_path, args, words):
    line = one_line_error(_export(swept, *args, "--out", str(tmp_path / "o")))
    for w in words:
        assert w in line, (w, line)


# ----------------------------------------------------------------------------- several ladders (fast)


def _trial_dir(root: Path, name: str, rank: int) -> Path:
    d = root / name
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "/b"}))
    (d / "adapter" / "adapter_model.safetensors").write_bytes(bytes([rank]) * 16)
    (d / "adapter" / "README.md").write_text("peft's template card")
    (d / "config.yaml").write_text(f"model:\n  id: org/base\n  name: base\nlora:\n  r: {rank}\n  targets: {name}\n")
    (d / "metrics.json").write_text(json.dumps({"alpha": 16.0, "eval_loss": 1.0}))
    return d


def _ladder(key: str, values: dict[int, float], rec: int, root: Path) -> Ladder:
    rungs = []
    for i, (rank, value) in enumerate(values.items()):
        d = _trial_dir(root, f"{key.replace('=', '-')}-r{rank}", rank)
        t = Trial(number=10 * len(key) + i, ladder=key, rank=rank, seed=0, state=TrialState.COMPLETE,
                  value=value, attrs={"output_dir": str(d)})
        rungs.append(Rung(rank=rank, values=[value], output_dirs=[str(d)],
                          jobs=[Job(seed=0, slot=0, status=JobStatus.DONE, trial=t, search=True)]))
    return Ladder(key=key, base=3.0, rungs=rungs, recommendation=Recommendation(rec, rec, 0.01, f"r={rec} wins"))


def test_several_ladders_one_folder_each_and_the_best_on_top(tmp_path):
    ladders = [_ladder("lora.targets=attention", {8: 2.0, 16: 1.9}, 16, tmp_path),
               _ladder("lora.targets=all_linear", {8: 1.5, 16: 1.45}, 8, tmp_path)]
    out = tmp_path / "best"  # a new folder: replacing an earlier export is ranksweep.ownership's (test_ownership)
    written = export.export_ladders(ladders, out, study="s")
    assert [(lad.key, folder) for lad, folder in written] == [
        ("lora.targets=all_linear", out), ("lora.targets=attention", out / "lora.targets_attention"),
        ("lora.targets=all_linear", out / "lora.targets_all_linear")]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "README.md", "adapter_config.json", "adapter_model.safetensors", "config.yaml", "metrics.json",
        "lora.targets_attention", "lora.targets_all_linear"])
    # best/ is the ladder whose recommended rank scored best (all_linear r=8: 1.5 < attention r=16: 1.9)
    assert (out / "adapter_model.safetensors").read_bytes() == bytes([8]) * 16
    assert (out / "lora.targets_attention" / "adapter_model.safetensors").read_bytes() == bytes([16]) * 16
    top = (out / "README.md").read_text()
    assert "base_model: org/base" in top and "## Other ladders" in top
    assert "[lora.targets_attention/](lora.targets_attention/)" in top
    assert "peft's template card" not in top
    assert "## Other ladders" not in (out / "lora.targets_attention" / "README.md").read_text()


def test_slugs_are_safe_folder_names():
    assert export.ladder_slug("lora.targets=attention quant=int8") == "lora.targets_attention_quant_int8"
    assert export.ladder_slug("../x=/etc") == "x_etc"
    assert export.ladder_slug("") == "default"


def test_nothing_to_export_is_one_line(tmp_path):
    lad = _ladder("default", {8: 2.0}, 8, tmp_path)
    lad.recommendation = None
    with pytest.raises(export.RanksweepError, match="no ladder has a recommended adapter"):
        export.export_ladders([lad], tmp_path / "out", study="s")


def test_write_best_replaces_the_folder_whole(tmp_path):
    from types import SimpleNamespace

    sweep = tmp_path / "outputs" / "sweeps" / "s"
    sweep.mkdir(parents=True)
    s = SimpleNamespace(study_name="s", storage_url="postgresql://u:secret@h/db")
    assert export.write_best(sweep, [_ladder("default", {8: 2.0, 16: 1.9}, 16, tmp_path / "a")], s) == sweep / "best"
    assert (sweep / "best" / "adapter_model.safetensors").read_bytes() == bytes([16]) * 16
    assert (sweep / "best" / ".ranksweep-export.json").is_file()  # marked: ranksweep may replace it
    (sweep / "best" / "merged").mkdir()  # an earlier `export --merge` into it: a rerun of the sweep replaces it all
    assert export.write_best(sweep, [_ladder("default", {8: 2.0, 16: 1.99}, 8, tmp_path / "b")], s)
    assert (sweep / "best" / "adapter_model.safetensors").read_bytes() == bytes([8]) * 16
    assert not (sweep / "best" / "merged").exists()
    assert sorted(p.name for p in sweep.iterdir()) == ["best"]  # no temp or old copies left
    card = (sweep / "best" / "README.md").read_text()
    assert "postgresql://u:***@h/db" in card and "secret" not in card
    # nothing recommended: nothing written, no error
    lad = _ladder("default", {8: 2.0}, 8, tmp_path / "c")
    lad.recommendation = None
    assert export.write_best(tmp_path / "other", [lad], s) is None
