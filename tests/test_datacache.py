"""Data cache integrity (coda_flax.datasets.cache / provenance): datasets keyed by their settings
with a manifest, built once under a lock, fingerprinted by the runs that use them; and the suite
never writes the user's cache."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from corpus_helpers import synthetic_source
from coda_flax.datasets import cache, needle, provenance
from coda_flax.datasets.fetch import default_data_dir
from coda_flax.experiments import demo, demo_runs, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _matches_manifest(directory):
    """The manifest against the files, recomputed here with hashlib (not with cache)."""
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    on_disk = sorted(os.path.relpath(os.path.join(r, f), directory)
                     for r, _, files in os.walk(directory) for f in files
                     if f not in ("manifest.json", ".lock"))
    assert sorted(manifest["files"]) == on_disk
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == _sha256(os.path.join(directory, rel)), rel
        assert entry["bytes"] == os.path.getsize(os.path.join(directory, rel)), rel
    return manifest


# ------------------------------------------------------------------------------ the cache
def _write_rows(n):
    def build(d):
        with cache.atomic_path(os.path.join(d, "rows.txt")) as tmp, open(tmp, "w") as f:
            f.write("".join(f"row {i}\n" for i in range(n)))
        return {"rows": {"rows": n}}
    return build


def test_settings_name_the_folder_and_a_changed_file_is_rebuilt(tmp_path):
    a = cache.prepare(str(tmp_path), "probe/rows", {"n": 3}, _write_rows(3), log=print)
    b = cache.prepare(str(tmp_path), "probe/rows", {"n": 5}, _write_rows(5), log=print)
    assert a["dir"] != b["dir"] and not a["reused"] and not b["reused"]
    key = hashlib.sha256(b'{"n":3}').hexdigest()[:12]     # canonical JSON, by hand
    assert a["dir"] == str(tmp_path / "probe" / f"rows-{key}")
    assert open(os.path.join(a["dir"], "rows.txt")).read().count("\n") == 3
    assert _matches_manifest(b["dir"])["rows"] == {"rows": 5}
    assert cache.prepare(str(tmp_path), "probe/rows", {"n": 3}, _write_rows(99))["reused"]
    with open(os.path.join(a["dir"], "rows.txt"), "a") as f:      # changed by hand
        f.write("intruder\n")
    assert cache.verify(a["dir"]) and "rows.txt changed" in cache.verify(a["dir"])[0]
    logs = []
    again = cache.prepare(str(tmp_path), "probe/rows", {"n": 3}, _write_rows(3), log=logs.append)
    assert not again["reused"] and "does not match its manifest" in logs[0]
    assert cache.verify(a["dir"]) == [] and again["hash"] == a["hash"]


_RACER = textwrap.dedent("""
    import os, sys, time, json
    from coda_flax.datasets import cache
    data_dir, log_path, go = sys.argv[1:4]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    def build(d):
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\\n")
        for i in range(4):
            with cache.atomic_path(os.path.join(d, f"part{i}.txt")) as tmp, open(tmp, "w") as f:
                f.write(f"{os.getpid()}\\n" * (i + 1))
            time.sleep(0.25)
        return {"rows": {"lines": 10}}
    m = cache.prepare(data_dir, "probe/parts", {"parts": 4}, build, log=lambda s: None)
    print(json.dumps({"dir": m["dir"], "hash": m["hash"], "reused": m["reused"]}), flush=True)
""")


def test_two_processes_preparing_one_dataset_make_one_good_copy(tmp_path):
    script, log, go = tmp_path / "racer.py", tmp_path / "builds.log", tmp_path / "go"
    script.write_text(_RACER)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(log),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=env) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()                                   # both start preparing at once
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    builders = log.read_text().split()
    assert len(builders) == 1                    # one built it, the other waited and reused it
    assert sorted(o["reused"] for o in outs) == [False, True]
    assert outs[0]["dir"] == outs[1]["dir"] and outs[0]["hash"] == outs[1]["hash"]
    manifest = _matches_manifest(outs[0]["dir"])
    assert manifest["rows"] == {"lines": 10}
    for i in range(4):                           # every part from the one builder, whole
        assert open(os.path.join(outs[0]["dir"], f"part{i}.txt")).read() == \
            f"{builders[0]}\n" * (i + 1)


# ------------------------------------------------------------------------------ Shakespeare
@pytest.fixture(scope="module")
def two_settings(tmp_path_factory):
    """The demo's quick settings and (smaller counts of) its full settings, prepared into one
    data dir, quick first: the order of the run that went wrong."""
    root = str(tmp_path_factory.mktemp("shared_data"))
    synthetic_source(root, num_plays=3, num_scenes=12)
    full = dataclasses.replace(demo.DemoSettings(), needle_train=160, gave_train=160,
                               needle_validation=40)
    quick = demo.QUICK
    out = {}
    for name, s in (("quick", quick), ("full", full)):
        prepared, got, _ = demo.prepare_task(s, root, log=lambda _: None)
        out[name] = (s, prepared, got)
        if name == "quick":
            quick_sha = _sha256(os.path.join(got["dir"], needle.NEEDLE_FILE))
    return root, out, quick_sha


def test_quick_and_full_settings_leave_two_datasets_each_matching_its_manifest(two_settings):
    root, out, quick_sha = two_settings
    (qs, qprep, qgot), (fs, fprep, fgot) = out["quick"], out["full"]
    assert len(cache.find(root, "shakespeare/needle")) == 2
    assert len(cache.find(root, "shakespeare/needle_gave")) == 2
    assert len(cache.find(root, "shakespeare/vocab")) == 2       # 300 and 2000 pieces
    assert qgot["dir"] != fgot["dir"] and qprep["vocab_dir"] != fprep["vocab_dir"]
    # the full preparation did not touch the quick files
    assert _sha256(os.path.join(qgot["dir"], needle.NEEDLE_FILE)) == quick_sha
    for s, got in ((qs, qgot), (fs, fgot)):
        manifest = _matches_manifest(got["dir"])
        rows = _rows(os.path.join(got["dir"], needle.NEEDLE_FILE))
        val = sum(r["split"] == "validation" for r in rows)
        assert val == s.needle_validation and len(rows) - val == s.needle_train
        assert manifest["rows"] == {"train": s.needle_train, "validation": val}
        assert manifest["settings"]["input_length"] == s.input_length
        assert max(r["num_tokens"] for r in rows) < s.input_length
    for d in cache.find(root, "shakespeare/vocab") + cache.find(root, "shakespeare/corpus"):
        _matches_manifest(d)
    # each run's task reads its own files
    from coda_flax import tasks
    for s, prep, got in (out["quick"], out["full"]):
        tasks.register_offline_tasks(root, prep["vocab_model"], needles={"got": got["dir"]})
        task = tasks.get_task_or_mixture("coda_shakespeare_needle")
        assert task.num_input_examples("validation") == s.needle_validation
    # naming no settings with two prepared is refused, naming both
    with pytest.raises(cache.AmbiguousDatasetError, match="2 needle \\(got\\) datasets"):
        needle.needle_path(root)


def test_a_dataset_changed_under_a_finished_backbone_is_named_and_not_reused(two_settings,
                                                                             tmp_path):
    root, out, _ = two_settings
    s, prep, got = out["quick"]
    demo.prepare_task(s, root, log=lambda _: None)           # binds the quick datasets
    tasks_ = [s.pretrain_task, demo.SPAN_TASK, demo.GAVE_TASK]
    before = provenance.fingerprint(tasks_)
    gave = [k for k in before if k.startswith("shakespeare/needle_gave-")]
    assert len(gave) == 1 and any(k.startswith("shakespeare/corpus-") for k in before)
    pre_run = demo_runs.pretrain_run(s, 300, {"data_dir": root})
    assert runner.spec(pre_run)["data"] == provenance.fingerprint(s.pretrain_task)
    assert gave[0] in runner.spec(pre_run)["data"]         # the mixture reads the gave needles
    folder = runner.run_dir(str(tmp_path), pre_run)           # a finished backbone's folder
    (tmp_path / "pretrain" / "result.json").write_text("{}")
    assert runner.finished(str(tmp_path), pre_run)            # same data: reused
    path = os.path.join(root, gave[0], "needle_gave.jsonl")
    original = open(path).read()
    try:
        with open(path, "w") as f:                           # another run rewrites it
            f.write(original.replace("Hamlet", "Hector"))
        after = provenance.fingerprint(tasks_)
        assert after[gave[0]] != before[gave[0]]
        logs = []
        assert not runner.finished(str(tmp_path), pre_run)
        assert runner.run_dir(str(tmp_path), pre_run, logs.append) == folder
        assert f"dataset {gave[0]} changed" in logs[0] and "set aside" in logs[0]
        assert not (tmp_path / "pretrain" / "result.json").exists()   # a new, empty folder
    finally:
        with open(path, "w") as f:
            f.write(original)
    assert provenance.fingerprint(tasks_) == before


def test_a_resumed_run_on_changed_data_is_refused_and_a_stale_run_set_aside(tmp_path):
    from coda_flax import tiny_config
    model_dir = str(tmp_path / "run")
    provenance.check_run(model_dir, {"shakespeare/needle-aaa": "1"})
    provenance.check_run(model_dir, {"shakespeare/needle-aaa": "1"})       # same: resumes
    with pytest.raises(provenance.DataChangedError,
                       match="dataset shakespeare/needle-aaa changed \\(hash 1 -> 2\\)"):
        provenance.check_run(model_dir, {"shakespeare/needle-aaa": "2"})
    d = cache.prepare(str(tmp_path / "data"), "probe/rows", {"n": 2}, _write_rows(2))["dir"]
    provenance.bind("probe_task", [d])
    probe = runner.Run(name="run", model=tiny_config(), task="probe_task",
                       feature_lengths={"inputs": 8, "targets": 4}, steps=1, batch_size=1,
                       learning_rate=0.1)
    logs = []
    assert runner.run_dir(str(tmp_path), probe, logs.append) == model_dir   # no run.json
    assert "no run.json" in logs[0] and os.listdir(model_dir) == ["run.json"]
    assert runner.run_dir(str(tmp_path), probe, logs.append) == model_dir and len(logs) == 1
    with open(os.path.join(d, "rows.txt"), "a") as f:
        f.write("one more row\n")                      # the dataset changes under the run
    runner.run_dir(str(tmp_path), probe, logs.append)
    assert "dataset probe/rows-" in logs[1] and "changed" in logs[1]
    assert sorted(os.listdir(tmp_path)).count("run") == 1 and len(os.listdir(tmp_path)) == 4


# ------------------------------------------------------------------------------ the user's cache
def test_prepared_data_without_a_folder_goes_to_the_session_folder():
    """Run by the next test with HOME pointed at an empty folder."""
    directory = cache.prepare(None, "probe/rows", {"n": 1}, _write_rows(1))["dir"]
    assert os.path.commonpath([directory, default_data_dir()]) == default_data_dir()
    assert not directory.startswith(os.path.join(os.path.expanduser("~"), ".cache"))


def test_the_suite_leaves_the_home_cache_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CODA_DATA_DIR"}
    env.update(HOME=str(home), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "inner"),
         os.path.join(TESTS, "test_datacache.py") +
         "::test_prepared_data_without_a_folder_goes_to_the_session_folder"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
    assert not (home / ".cache" / "coda_flax").exists()
    assert list((tmp_path / "inner").glob("coda_data_dir*/probe/rows-*/manifest.json"))
