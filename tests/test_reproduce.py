"""`coda reproduce`: the paper's tables as data (checked against the paper text), their gin files,
the dry run, the table writer, prerequisite checks, and a tiny end-to-end run that resumes."""

import copy
import json
import math
import os
import re
import shlex
from pathlib import Path

import pytest

from coda_flax.config import ModelConfig

from coda_flax.experiments import gin_commands as gc
from coda_flax.experiments import paper_tables as pt
from coda_flax.experiments import reproduce as rp
from coda_flax.resources import GIN_DIR
from coda_flax.cli.reproduce import main as cli_main

# The paper's text lives beside the clone (<clone>/../shared/paper), not in the repository.
PAPER_TXT = os.environ.get("CODA_PAPER_TXT") or str(
    Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "coda-2304.04947.txt")
# The paper's tables that print a "Δ Avg" column (Tables 6 and 9 do not).
DELTA_AVG_TABLES = (2, 3, 4, 5)
EXPECTED_EXPERIMENTS = {2: 45, 3: 54, 4: 18, 5: 18, 6: 15, 9: 54}
READY = (2, 3, 4, 9)


@pytest.fixture(scope="module")
def tables():
    return {n: pt.load_table(n) for n in pt.TABLE_NUMBERS}


# ------------------------------------------------------------------------------ transcription
@pytest.fixture(scope="module")
def paper_lines():
    if not os.path.exists(PAPER_TXT):
        message = (f"paper text not found at {PAPER_TXT} (set $CODA_PAPER_TXT, or put the "
                   f"paper at ../shared/paper/ beside the clone)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI provides it, so its absence is an error", pytrace=False)
        pytest.skip(message)
    with open(PAPER_TXT, encoding="utf-8") as f:
        return f.read().splitlines()


def _block(lines, number):
    """The lines between the previous table caption and Table `number`'s caption."""
    caps = [i for i, l in enumerate(lines) if re.match(r"^Table \d+\. ", l)]
    cap = next(i for i in caps if lines[i].startswith(f"Table {number}. "))
    prev = max([i for i in caps if i < cap], default=-1)
    return lines[prev + 1:cap], lines[cap]


def _value(cell):
    t = cell.replace("\\times", "").replace("×", "").replace("±", "").replace(" ", "").strip()
    t = t[1:-1] if t.startswith("(") and t.endswith(")") else t
    if t in ("", "-"):
        return None
    try:
        return float(t)
    except ValueError:
        return "label"


def _norm(label):
    return re.sub(r"\s+", "", label).lower()


def _strip_trailing_none(seq):
    seq = list(seq)
    while seq and seq[-1] is None:
        seq.pop()
    return seq


@pytest.mark.parametrize("number", pt.TABLE_NUMBERS)
def test_paper_numbers_and_caption_match_the_paper_text(tables, paper_lines, number):
    spec = tables[number]
    block, caption = _block(paper_lines, number)
    assert spec["caption"] == caption                 # transcribed verbatim
    pos = 0
    for row in spec["rows"]:
        if row.get("section"):
            pos = next(i for i in range(pos, len(block)) if block[i].strip() == row["section"])
        expected = [row.get("paper", {}).get(c["key"]) for c in spec["columns"]]
        if spec.get("delta_avg"):
            expected.append(row.get("paper_delta_avg"))
        expected = _strip_trailing_none(expected)
        for i in range(pos, len(block)):
            cells = block[i].rstrip("\t").split("\t")
            values = _strip_trailing_none(_value(c) for c in cells)
            if (_norm(cells[0]) == _norm(row["labels"][0]) and len(values) >= len(expected)
                    and values[len(values) - len(expected):] == expected):
                pos = i + 1
                break
        else:
            pytest.fail(f"Table {number} row {row['key']} {expected} not found (in order) in "
                        f"the paper text")


def test_delta_avg_is_transcribed_for_exactly_the_tables_that_print_it(tables):
    assert tuple(n for n in pt.TABLE_NUMBERS if tables[n].get("delta_avg")) == DELTA_AVG_TABLES
    for n in DELTA_AVG_TABLES:
        assert tables[n]["delta_avg"]["label"] == "Δ Avg"


@pytest.mark.parametrize("number", DELTA_AVG_TABLES)
def test_paper_delta_avg_agrees_with_the_transcribed_cells(tables, number):
    """Independent of the paper file: each printed Δ Avg must follow from the row's numbers, up
    to rounding (the cells are rounded, so both means may be off by half a unit of the last
    digit; Table 3's truncation r = 5 row prints -12.9 where its cells give -12.83)."""
    spec = tables[number]
    d = spec["delta_avg"]["decimals"]
    tolerance = 2 * 0.5 * 10 ** -spec["decimals"] + 0.5 * 10 ** -d + 1e-9
    rows = {r["key"]: r for r in spec["rows"]}
    keys = [c["key"] for c in pt.metric_columns(spec)]
    checked = 0
    for row in spec["rows"]:
        if row.get("reference"):
            continue
        base = rows[row["delta_baseline"]]
        mean = lambda r: sum(r["paper"][k] for k in keys) / len(keys)  # noqa: E731
        assert abs(mean(row) - mean(base) - row["paper_delta_avg"]) <= tolerance, \
            (number, row["key"])
        checked += 1
    assert checked >= 3, f"Table {number}: only {checked} rows with a Δ Avg were checked"


def test_table8_hyperparameters_match_the_paper_and_the_task_lengths(paper_lines):
    table8 = pt.load_table8()
    block, caption = _block(paper_lines, 8)
    assert caption == table8.CAPTION
    previous, seen = None, set()
    for line in block:
        cells = line.split("\t")
        if cells[0] not in table8.TABLE8:
            continue
        cells = cells + [""] * (6 - len(cells))
        if previous:
            cells = [c if c.strip() else p for c, p in zip(cells, previous)]
        previous = cells
        hp = table8.TABLE8[cells[0]]
        lr, schedule = [x.strip() for x in cells[5].split(",")]
        assert (int(cells[1]), int(cells[2]), int(cells[3].rstrip("K")) * 1000, cells[4]) == (
            hp["input_length"], hp["batch_size"], hp["steps"], hp["optimizer"]), cells[0]
        assert float(lr) == hp["learning_rate"]
        assert {"constant": "constant", "inverse decay": "rsqrt",
                "cosine decay": "cosine"}[schedule] == hp["schedule"]
        seen.add(cells[0])
    assert seen == set(table8.TABLE8)

    from coda_flax.tasks.features import TASK_FEATURE_LENGTHS
    for name, t in table8.TASKS.items():
        if t["task"] in TASK_FEATURE_LENGTHS:
            assert table8.finetune(name)["feature_lengths"] == TASK_FEATURE_LENGTHS[t["task"]]


# ------------------------------------------------------------------------------ grids and gin
_VARIANTS = {  # variant file -> (reduction it fixes, attention, router)
    "parallel_adapter": (1, "k_to_all", "soft_topk"),
    "coda_k_to_all": (None, "k_to_all", "soft_topk"),
    "coda_k_to_k": (None, "k_to_k", "soft_topk"),
    "coda_sigmoid": (None, "k_to_k", "sigmoid"),
    "coda_first_k": (None, "k_to_k", "first_k"),
}


def test_every_grid_entry_has_gin_files_that_exist_and_parse(tables, tmp_path):
    import gin
    from coda_flax.train.gin_config import parse_gin
    for number in pt.TABLE_NUMBERS:
        spec = tables[number]
        exps = rp.expand(spec, tmp_path, ["INITIAL_CHECKPOINT_PATH='/ckpt/{preset}'"])
        assert len(exps) == EXPECTED_EXPERIMENTS[number]
        seen = set()
        for e in exps:
            for s in e.stages:
                key = tuple(a for a in s.argv if "MODEL_DIR" not in a and "CHECKPOINT" not in a)
                if key in seen:
                    continue
                seen.add(key)
                assert not gc.missing_gin_files(s.gin_files), (e.name, s.kind)
                gin.clear_config()
                parse_gin(s.gin_files, [f"{n} = {v}" for n, v in s.bindings.items()])
                if s.kind == "eval":
                    assert gin.query_parameter("%SPLIT") == e.split
                    continue
                config = gin.get_configurable("model_config")()
                assert config == ModelConfig.from_preset(e.preset, coda=config.coda)
                if number not in READY:          # Tables 5 / 6: the grid parses, runs refuse
                    continue
                assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == (
                    e.task if s.kind == "finetune" else "coda_c4_span_corruption")
                assert e.preset.startswith(("t5_1_1", "paper_text"))
                reduction, attention, router = _VARIANTS[os.path.basename(
                    e.config["variant_gin"])[:-4]]
                assert (config.coda.attention, config.coda.router) == (attention, router)
                if s.kind == "pretrain":
                    assert config.coda.num_routed == 192
                    assert gin.query_parameter("%TRAIN_STEPS") == 100_000
                else:
                    assert config.coda.reduction == (reduction or e.config["reduction"])
                    assert gin.query_parameter("%TRAIN_STEPS") == e.config["train_steps"]
                    assert gin.query_parameter("%BATCH_SIZE") == 128
                    assert gin.query_parameter("%TASK_FEATURE_LENGTHS")["inputs"] == \
                        e.config["feature_lengths"]["inputs"]
    gin.clear_config()


def test_packaged_gin_files_by_name_from_any_directory_with_stable_fingerprints(tables, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)                       # outside the repository
    ckpt = ["INITIAL_CHECKPOINT_PATH='/c/{preset}'"]
    e = rp.expand(tables[2], "/out", ckpt)[9]                    # k_to_all_r3.base_mnli
    assert e.stages[1].gin_files == ["models/t5_1_1_base.gin", "variants/coda_k_to_all.gin",
                                     "runs/finetune.gin"]
    assert e.stages[2].gin_files == ["runs/eval.gin"]
    assert not any(gc.missing_gin_files(s.gin_files) for s in e.stages)
    # The run fingerprints are those from before the gin files moved into the package (computed
    # then with gin/models/... paths), so finished runs are still found.
    assert [s.fingerprint for s in e.stages] == ["bbde093a0d", "505258e1a5", "0ae9b20071"]
    assert os.path.basename(rp.expand(tables[2], "/out", ckpt)[0].stages[0].directory) == \
        "t5_1_1_base.parallel_adapter.coda_mnli.d056b60fc5"
    # A table naming its gin files the old way (gin/models/...) gets the same runs.
    old = copy.deepcopy(tables[2])
    for item in (*old["rows"], *old["columns"]):
        for key in ("model_gin", "variant_gin"):
            if item.get(key):
                item[key] = "gin/" + item[key]
    assert ([s.argv for s in rp.expand(old, "/out", ckpt)[9].stages]
            == [s.argv for s in e.stages])
    # A file of the same name in the current directory would shadow the packaged one: the
    # command then names the packaged file by its absolute path.
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "eval.gin").write_text("# not the packaged one\n")
    assert gc.gin_file_arg("runs/eval.gin") == os.path.join(GIN_DIR, "runs", "eval.gin")
    assert gc.gin_file_arg("models/tiny.gin") == "models/tiny.gin"
    assert gc.gin_file_arg("mine.gin") == str(tmp_path / "mine.gin")     # a user's own file
    stage = rp.Stage("train", ["train", "--gin_file=mine.gin"], "", "")
    assert gc.missing_gin_files(stage.gin_files) \
        == [str(tmp_path / "mine.gin")]


def test_dry_run_lists_every_table_with_exact_commands(capsys, tables, tmp_path):
    assert cli_main(["--table", "all", "--dry-run", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sections = re.split(r"(?m)^Table (\d+): ", out)[1:]
    counts = {int(n): len(re.findall(r"(?m)^\[\d+/\d+\] ", body))
              for n, body in zip(sections[::2], sections[1::2])}
    assert counts == EXPECTED_EXPERIMENTS
    assert out.count("NOT RUNNABLE: needs BEST-RQ pretrained speech encoders") == 1
    assert out.count("NOT RUNNABLE") == 1                 # Table 6: tests/test_table6.py
    # The printed commands are the argv the runner executes.
    printed = [shlex.split(l.strip()) for l in out.splitlines() if l.startswith("  coda ")]
    argvs = [["coda", *s.argv] for n in pt.TABLE_NUMBERS
             for e in rp.expand(tables[n], tmp_path) for s in e.stages]
    assert all(p in argvs for p in printed) and len(printed) > 200
    assert "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 1664, 'targets': 64}\"" in out   # XSum


def test_shared_runs_options_and_placeholders(tables, tmp_path):
    ckpt = ["INITIAL_CHECKPOINT_PATH='/c/{preset}'"]
    t2 = {e.name: e for e in rp.expand(tables[2], tmp_path, ckpt)}
    t3 = {e.name: e for e in rp.expand(tables[3], tmp_path, ckpt)}
    # Table 3's soft top-k rows are Table 2's k-to-k runs; the evaluations are per table.
    a, b = t2["k_to_k_r3.large_rte"], t3["soft_topk_r3.large_rte"]
    assert [s.directory for s in a.stages[:-1]] == [s.directory for s in b.stages[:-1]]
    assert a.result_dir != b.result_dir
    assert a.stages[0].bindings["INITIAL_CHECKPOINT_PATH"] == "'/c/t5_1_1_large'"
    assert a.stages[1].bindings["INITIAL_CHECKPOINT_PATH"] == repr(
        os.path.join(a.stages[0].directory, "final"))
    # Table 4 is Table 9's XL block (XSum evaluated on test instead of validation).
    t4 = {e.name: e for e in rp.expand(tables[4], tmp_path)}
    t9 = {e.name: e for e in rp.expand(tables[9], tmp_path)}
    assert (t4["coda_r3.xsum"].finetune_stage.directory
            == t9["xl_coda_r3.xsum"].finetune_stage.directory)
    assert (t4["coda_r3.xsum"].split, t9["xl_coda_r3.xsum"].split) == ("test", "validation")
    # --pretrain-steps 0 finetunes from the dense checkpoint; N changes the pretraining run.
    e0 = rp.expand(tables[2], tmp_path, ckpt, 0)[5]
    assert [s.kind for s in e0.stages] == ["finetune", "eval"]
    assert e0.stages[0].bindings["INITIAL_CHECKPOINT_PATH"] == "'/c/t5_1_1_large'"
    e1 = rp.expand(tables[2], tmp_path, (), 20_000)[14]
    assert e1.stages[0].bindings["TRAIN_STEPS"] == "20000" and e1.stages[0].kind == "pretrain"
    # User bindings come after the table's; runner-owned names are refused; --only selects.
    e = rp.expand(tables[2], tmp_path, ["TRAIN_STEPS = 10"])[9]
    assert [s.kind for s in e.stages] == ["pretrain", "finetune", "eval"]
    assert e.stages[0].bindings["TRAIN_STEPS"] == "100000"     # --pretrain-steps' business
    assert "--gin.TRAIN_STEPS=10" in e.stages[1].argv
    assert "--gin.TRAIN_STEPS=300000" not in e.stages[1].argv
    with pytest.raises(rp.ReproduceError, match="MODEL_DIR"):
        rp.expand(tables[2], tmp_path, ["MODEL_DIR='/x'"])
    sel = rp.select(tables[3], rp.expand(tables[3], tmp_path), ["first_k_*,base_rte"])
    assert len(sel) == 18 + 4
    with pytest.raises(rp.ReproduceError, match="rows: soft_topk_r3"):
        rp.select(tables[3], rp.expand(tables[3], tmp_path), ["nope"])


# ------------------------------------------------------------------------------ table writer
def test_write_table_puts_ours_and_paper_side_by_side(tables):
    spec = tables[2]
    keys = [c["key"] for c in spec["columns"]]
    pa = dict(zip(keys, [87.0, 71.0, 78.0, 90.0, 85.0, 86.0, 91.0, 90.0, 88.0]))
    coda = dict(zip(keys, [86.0, 72.0, 77.0, 90.0, 86.0, 85.0, 91.0, 91.0, 89.0]))
    results = {f"pa.{k}": {"accuracy": v, "loss_per_token": 0.1} for k, v in pa.items()}
    results.update({f"k_to_all_r3.{k}": v for k, v in coda.items()})       # numbers work too
    results["k_to_k_r3.base_mnli"] = {"accuracy": 85.04}
    md = pt.write_table(spec, results)
    lines = md.splitlines()
    assert lines[0].startswith("**Table 2.** Results of applying CoDA to T5 v1.1 models.")
    assert lines[2] == ("| Model | Reduction r | Base MNLI | Base RTE | Base BoolQ | Large MNLI | "
                        "Large RTE | Large BoolQ | XL MNLI | XL RTE | XL BoolQ | Δ Avg |")
    body = [l for l in lines if l.startswith("| ")][1:]
    assert len(body) == 5                                         # the paper's five rows, in order
    assert body[0].startswith("| Parallel Adapter (w/o conditional computation) | - | "
                              "87.0 (paper 87.1) | 71.0 (paper 71.5) |")
    assert body[0].endswith("| ± 0.0 (paper ± 0.0) |")
    delta = (sum(coda.values()) - sum(pa.values())) / 9
    assert body[1].endswith(
        f"| 91.0 (paper 91.3) | 89.0 (paper 89.4) | {delta:+.1f} (paper +0.2) |")
    assert body[2].startswith("| CoDA, k-to-k attention | 3 | 85.0 (paper 86.3) | - (paper 72.2) |")
    assert body[2].endswith("| - (paper -0.3) |")                # incomplete row: no Δ yet
    assert body[4].endswith("| - (paper 84.8) | - (paper -2.1) |")
    assert pt.write_table(spec, {}).count("- (paper") == 50     # 45 cells + 5 Δ

    md9 = pt.write_table(tables[9], {"xl_coda_r5.xsum": {"rouge2": 20.04}})
    assert "| **Large** |" in md9 and "| CoDA | 10M | 5 |" in md9
    assert "| 20.0 (paper 20.7) |" in md9
    md4 = pt.write_table(tables[4], {})
    assert ("| Prefix Tuning (Li & Liang, 2021) [†] | 15M (2M) | - | (86.3) | - | - | - | - | "
            "20.5 | - |") in md4
    md6 = pt.write_table(tables[6], {"coda_r8.docvqa": {"anls": 66.0}})
    assert "| CoDA | 8 | - (paper 67.6) | - (paper 8.0×) | 66.0 (paper 66.6) |" in md6
    md5 = pt.write_table(tables[5], {})
    assert "| CoDA | 2 |" in md5 and "(paper +0.02) |" in md5 and "Not runnable yet" in md5


# ------------------------------------------------------------------------------ refusing clearly
def test_speech_table_refuses_to_run(tables, tmp_path, capsys):
    for number, word in ((5, "BEST-RQ"),):
        with pytest.raises(rp.TableNotImplementedError, match=f"needs {word} pretrained"):
            rp.run_table(tables[number], tmp_path)
        assert cli_main(["--table", str(number), "--output", str(tmp_path)]) == 2
        assert "coda compare" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_missing_prerequisites_are_named_with_how_to_provide_them(tables, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.delenv("CODA_VOCAB", raising=False)
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    out = tmp_path / "out"
    with pytest.raises(rp.MissingPrerequisitesError) as err:
        rp.run_table(tables[2], out, only=["pa.base_rte", "k_to_all_r3.base_boolq"],
                     bindings=[f"TFDS_DATA_DIR = '{tfds_dir}'"])
    text = str(err.value)
    assert "nothing was run" in text
    assert f"tfds build super_glue/rte --data_dir DIR" in text and str(tfds_dir) in text
    assert "tfds build super_glue/boolq" in text and "tfds build c4/en" in text
    assert "--pretrain-steps 0" in text                          # the way around C4
    assert "--gin.VOCAB_PATH" in text and "sentencepiece.model" in text
    assert "--gin.INITIAL_CHECKPOINT_PATH" in text and "coda convert --hf" in text
    assert not out.exists()

    # A checkpoint template without {preset} for several sizes, and a checkpoint that is not there.
    with pytest.raises(rp.MissingPrerequisitesError) as err:
        rp.run_table(tables[2], out, only=["pa.base_rte", "pa.xl_rte"], pretrain_steps=0,
                     bindings=[f"INITIAL_CHECKPOINT_PATH='{tmp_path}/ckpt'"])
    assert "put {preset} in it" in str(err.value)
    assert f"{tmp_path}/ckpt (preset t5_1_1_base) is not a coda_flax checkpoint" in str(err.value)

    assert cli_main(["--table", "2", "--only", "pa.base_rte", "--output", str(out),
                     f"--gin.TFDS_DATA_DIR='{tfds_dir}'"]) == 2
    assert "tfds build super_glue/rte" in capsys.readouterr().err
    assert cli_main(["--table", "7", "--dry-run"]) == 2
    assert "unknown table" in capsys.readouterr().err


# ------------------------------------------------------------------------------ a tiny real run
TINY = ["model_config.vocab_size=400", "model_config.d_model=32", "model_config.num_heads=2",
        "model_config.head_dim=16", "model_config.d_ff=64", "train.trainable='all'",
        "train.progress=False", "train.log_every=1", "train.k_anneal_stages=1",
        "train.eval_max_examples=4",
        "train.eval_batch_size=4", "evaluate.max_examples=4", "evaluate.batch_size=4"]


def tiny_spec(pretrain=False):
    """A one-cell stand-in table: CoDA r = 3 finetuned 2 steps on the offline play task (after
    CoDA pretraining, 1 step of span corruption with k = 16, when `pretrain`)."""
    return dict(
        id="tiny", number=99, title="tiny stand-in", caption="Table 99. A tiny stand-in.",
        status="ready", label_columns=["Model", "r"], decimals=1,
        delta_avg=dict(label="Δ Avg", decimals=1),
        initial_checkpoint=dict(required=False, help=""),
        columns=[dict(key="play", label="Play Acc.", kind="metric",
                      model_gin="models/tiny.gin", preset="tiny",
                      task="coda_shakespeare_play", metric="accuracy", split="validation",
                      feature_lengths={"inputs": 64, "targets": 8}, train_steps=2, batch_size=8,
                      learning_rate=0.02, schedule="constant")],
        rows=[dict(key="coda_r3", labels=["CoDA", "3"],
                   variant_gin="variants/coda_k_to_all.gin", reduction=3,
                   pretrain=dict(run_gin="runs/pretrain.gin",
                                 variant_gin="variants/coda_k_to_all.gin",
                                 task="coda_shakespeare_span_corruption",
                                 feature_lengths={"inputs": 64, "targets": 14}, num_routed=16,
                                 train_steps=1) if pretrain else None,
                   paper={"play": 50.0}, paper_delta_avg=0.0,
                   delta_baseline="coda_r3")])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from corpus_helpers import prepared_corpus
    root = tmp_path_factory.mktemp("data")
    return root, prepared_corpus(root)


@pytest.mark.slow   # ~60 s; the dry-run and stage tests stay in the default suite
def test_tiny_experiment_runs_end_to_end_then_is_skipped(corpus, tmp_path, monkeypatch):
    data, vocab = corpus
    spec = tiny_spec()
    pt.validate_table(spec)
    bindings = [f"DATA_DIR='{data}'", f"VOCAB_PATH='{vocab}'", *TINY]
    logs = []
    summary = rp.run_table(spec, tmp_path, bindings=bindings, log=logs.append)
    assert summary["ran"] == ["coda_r3.play"] and not summary["failed"], "\n".join(logs)

    results = json.load(open(tmp_path / "tiny" / "coda_r3.play" / "eval_results.json"))
    assert results["task"] == "coda_shakespeare_play" and results["num_examples"] == 4
    acc = results["accuracy"]
    assert 0.0 <= acc <= 100.0
    table = json.load(open(tmp_path / "tiny.json"))
    (exp,) = table["experiments"]
    assert (exp["status"], exp["ours"], exp["paper"]) == ("finished", acc, 50.0)
    assert exp["commands"][0].startswith(
        f"coda train --gin_file={gc.gin_file_arg('models/tiny.gin')} ")
    md = open(tmp_path / "tiny.md").read()
    assert f"| CoDA | 3 | {acc:.1f} (paper 50.0) | ± 0.0 (paper ± 0.0) |" in md
    run_dir = exp["run_dir"]
    assert os.path.exists(os.path.join(run_dir, "final", "config.json"))
    assert "REDUCTION = 3" in open(os.path.join(run_dir, "config.gin")).read()

    # A second invocation finds the finished experiment and runs nothing.
    def boom(stage):
        raise AssertionError(f"ran {stage.kind} again")
    monkeypatch.setattr(rp, "_run_stage", boom)
    logs = []
    summary = rp.run_table(spec, tmp_path, bindings=bindings, log=logs.append)
    assert summary["skipped"] == ["coda_r3.play"] and summary["ran"] == []
    assert any("finished, skipped" in l for l in logs)
    assert json.load(open(tmp_path / "tiny" / "coda_r3.play" / "eval_results.json")) == results
    # Moving the data does not invalidate it; changing what is computed does.
    assert rp.expand(spec, tmp_path, [f"DATA_DIR='/elsewhere'", f"VOCAB_PATH='{vocab}'",
                                      *TINY])[0].finished()
    assert not rp.expand(spec, tmp_path, [*bindings, "TRAIN_STEPS=3"])[0].finished()
    assert not rp.expand(spec, tmp_path, [*bindings, "INITIAL_CHECKPOINT_PATH='/c'"])[0].finished()
    assert math.isfinite(json.load(open(tmp_path / "tiny.json"))["experiments"][0]["ours"])


@pytest.mark.slow
def test_tiny_experiment_with_coda_pretraining(corpus, tmp_path):
    """The pretrain -> finetune -> eval chain: finetuning starts from the pretraining's output."""
    data, vocab = corpus
    spec = tiny_spec(pretrain=True)
    bindings = [f"DATA_DIR='{data}'", f"VOCAB_PATH='{vocab}'", *TINY]
    (e,) = rp.expand(spec, tmp_path, bindings)
    assert [s.kind for s in e.stages] == ["pretrain", "finetune", "eval"]
    summary = rp.run_table(spec, tmp_path, bindings=bindings, log=lambda s: None)
    assert summary["ran"] == ["coda_r3.play"] and not summary["failed"]
    pre = e.stages[0].directory
    assert "coda_shakespeare_span_corruption" in open(os.path.join(pre, "config.gin")).read()
    config = open(os.path.join(e.stages[1].directory, "config.gin")).read()
    assert f"{os.path.basename(pre)}/final'" in config
    assert os.path.exists(e.results_path())
    # Another finetuning length reuses the finished pretraining run.
    logs = []
    rp.run_table(spec, tmp_path, bindings=[*bindings, "TRAIN_STEPS=1"], log=logs.append)
    assert any(l.startswith("  pretrain: done already") for l in logs)


# ------------------------------------------------------------------------------ on the runner
def test_training_stages_are_runner_runs_of_their_gin_settings(tmp_path):
    """coda's training stages run as the experiment runner's Runs (experiments/gin_runs.py):
    each Run holds what its `coda train` command sets, finetuning starts from the pretraining
    Run, and moving the data, vocabulary or dense checkpoint keeps the fingerprints while
    changing what is computed does not."""
    from coda_flax.config import CodaConfig
    from coda_flax.experiments import gin_runs, runner
    from coda_flax.train.settings import SettingError
    spec = tiny_spec(pretrain=True)
    where = ["DATA_DIR='/d'", "VOCAB_PATH='/v/spm.model'", "INITIAL_CHECKPOINT_PATH='/c/dense'"]
    (e,) = rp.expand(spec, tmp_path, [*where, *TINY])
    pre, fine, ev = gin_runs.chain(e.stages)
    assert ev is None and fine.init is pre and pre.init == "/c/dense"
    assert (pre.name, fine.name) == tuple(os.path.basename(s.directory) for s in e.stages[:2])
    tiny = dict(vocab_size=400, d_model=32, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64,
                num_encoder_layers=2, num_decoder_layers=1)       # models/tiny.gin + TINY
    coda = CodaConfig(reduction=3, attention="k_to_all", router="soft_topk")
    assert fine.model == ModelConfig(**tiny, coda=coda)
    assert pre.model == ModelConfig(**tiny, coda=CodaConfig(
        reduction=3, attention="k_to_all", router="soft_topk", num_routed=16))
    # tiny_spec's column, runs/finetune.gin and TINY; tiny_spec's pretraining, runs/pretrain.gin
    assert (fine.task, dict(fine.feature_lengths), fine.steps, fine.batch_size,
            fine.learning_rate, fine.trainable, fine.k_anneal_fraction, fine.k_anneal_stages,
            fine.eval_batch_size, fine.eval_max_examples) == (
        "coda_shakespeare_play", {"inputs": 64, "targets": 8}, 2, 8, 0.02, "all", 0.1, 1, 4, 4)
    assert (pre.task, dict(pre.feature_lengths), pre.steps, pre.batch_size, pre.learning_rate,
            pre.options["schedule"], pre.options["warmup_steps"]) == (
        "coda_shakespeare_span_corruption", {"inputs": 64, "targets": 14}, 1, 128, 0.01,
        "rsqrt", 10000)
    assert (fine.options["schedule"], fine.options["eval_every"], fine.options["data_dir"],
            fine.options["vocab_path"]) == ("constant", 5000, "/d", "/v/spm.model")
    assert "REDUCTION = 3" in fine.options["extra_files"]["config.gin"]

    def fingerprints(bindings):
        (x,) = rp.expand(spec, tmp_path, bindings)
        return [runner.fingerprint(r) for r in gin_runs.chain(x.stages)[:2]]
    moved = ["DATA_DIR='/e'", "VOCAB_PATH='/w/spm.model'", "INITIAL_CHECKPOINT_PATH='/c2/dense'",
             "NUM_PARTITIONS=2"]
    base = fingerprints([*where, *TINY])
    assert fingerprints([*moved, *TINY]) == base
    assert fingerprints([*where, *TINY, "TRAIN_STEPS=3"])[1] != base[1]
    assert fingerprints([*where, *TINY, "TRAIN_STEPS=3"])[0] == base[0]  # --pretrain-steps'
    assert fingerprints([*where[:2], *TINY]) != base          # from scratch: another run
    (bad,) = rp.expand(spec, tmp_path, [*where, *TINY, "LEARNING_RATE='fast'"])
    with pytest.raises(SettingError, match="LEARNING_RATE"):
        gin_runs.chain(bad.stages)


def test_folders_of_an_earlier_reproduce_are_kept(tmp_path):
    """Folders that `coda reproduce` trained before it ran on the runner (no run.json): a
    finished one counts as done and its final checkpoint starts the next stage; a stopped one
    is taken as the run's folder (run.json written) and resumed there, not set aside."""
    from coda_flax.experiments import gin_runs, runner
    (e,) = rp.expand(tiny_spec(pretrain=True), tmp_path, TINY)
    pre_stage, fine_stage = e.stages[:2]
    os.makedirs(os.path.join(pre_stage.directory, "final", "params"))
    Path(pre_stage.directory, "final", "config.json").write_text("{}")
    pre, fine, _ = gin_runs.chain(e.stages)
    assert gin_runs.finished(pre_stage, pre)
    assert fine.init == os.path.join(pre_stage.directory, "final")     # a path, not a Run
    assert not gin_runs.finished(fine_stage, fine)
    os.makedirs(os.path.join(fine_stage.directory, "checkpoints"))     # stopped mid-training
    root = os.path.dirname(fine_stage.directory)
    assert runner.adopt(root, fine, log=lambda s: None)
    assert runner.run_dir(root, fine, log=lambda s: None) == fine_stage.directory
    assert os.path.isdir(os.path.join(fine_stage.directory, "checkpoints"))
    assert not [p for p in os.listdir(root) if "set-aside" in p]
    assert not runner.adopt(root, fine, log=lambda s: None)            # once only


def test_eval_stage_takes_the_user_bindings_meant_for_training(tmp_path, monkeypatch):
    """--gin.TRAIN_STEPS=N (the docstring's way to shorten the finetuning) reaches the eval stage
    too, whose gin files read no TRAIN_STEPS: strict gin refused it there as a typo; the eval
    command allows it (the training stages check the same bindings strictly)."""
    import gin
    from coda_flax.train import gin_config
    (e,) = rp.expand(tiny_spec(), tmp_path, ["TRAIN_STEPS = 1", *TINY])
    ev = e.eval_stage
    assert ev.argv[-1] == "--gin_allow_unknown"
    bindings = [f"{n} = {v}" for n, v in ev.bindings.items()]
    try:
        with pytest.raises(gin_config.GinConfigError, match="TRAIN_STEPS"):
            gin_config.parse_gin(ev.gin_files, bindings)
        gin_config.parse_gin(ev.gin_files, bindings, allow_unknown=True)
        assert gin.query_parameter("%SPLIT") == "validation"
    finally:
        gin.clear_config()
    calls = []
    monkeypatch.setattr(gin_config, "run_gin", lambda *a, **kw: calls.append((a, kw)))
    rp._run_stage(ev)
    assert calls[0][0][0] == "eval" and calls[0][1] == {"allow_unknown": True}
    (plain,) = rp.expand(tiny_spec(), tmp_path)
    assert "--gin_allow_unknown" not in plain.eval_stage.argv
