"""Speech data and tasks: CharVocabulary, transcript normalisation, the offline corpus built from
fake unpacked Debian packages (asterisk prompts, pocketsphinx clips, a fake espeak-ng), a fake
LibriSpeech tree of FLAC files, both seqio tasks through ContinuousEncDecFeatureConverter, clear
errors, and WER / CER against jiwer. Nothing here downloads."""

import glob
import gzip
import json
import os
import random
import shutil
import sys

import jiwer
import numpy as np
import pytest
import seqio
import soundfile
import tensorflow as tf

from coda_flax.frontends import audio
from coda_flax.tasks import metrics
from coda_flax.tasks import speech
from coda_flax.datasets import librispeech as ls
from coda_flax.datasets import speech as sd
from coda_flax.datasets import transcripts
from coda_flax.tasks.features import ContinuousEncDecFeatureConverter

LENGTHS = {"inputs": 400, "targets": 64}


def _tone(seconds, sr, freq=300.0, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).normal(size=t.shape) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


# ----------------------------------------------------------------------------- vocabulary

def test_char_vocabulary_ids_and_round_trip():
    v = speech.CharVocabulary()
    assert v.vocab_size == 29 and v.eos_id is None and v.unk_id is None and v.pad_id == 0
    assert v.encode(" ") == [] and v.encode("a b") == [3, 1, 4]
    assert v.encode("z'") == [28, 2]
    assert v.encode("Hello, World-2!") == v.encode("hello world")
    assert v.decode([0, 3, 0, 1, 4, 0, 99]) == "a b"
    text = "it's a test"
    assert v.decode(v.encode(text)) == text
    assert v == speech.CharVocabulary() and hash(v) == hash(speech.CharVocabulary())


def test_char_vocabulary_tf_matches_python():
    v = speech.CharVocabulary()
    texts = ["Hello, World!", "don't  stop", "  x-ray  ", "", "café 42"]
    for t in texts:
        assert v.encode_tf(tf.constant(t)).numpy().tolist() == v.encode(t)
        assert v.encode_tf(tf.constant(t)).dtype == tf.int32
    batched = v.encode_tf(tf.constant(texts))
    assert batched.to_list() == [v.encode(t) for t in texts]
    ids = tf.constant([[3, 1, 4, 0, 0], [28, 2, 0, 0, 0]])
    assert [s.decode() for s in v.decode_tf(ids).numpy()] == ["a b", "z'"]
    assert v.decode_tf(tf.constant([3, 0, 5])).numpy().decode() == "ac"


# ----------------------------------------------------------------------------- transcripts

@pytest.mark.parametrize("raw, expected", [
    ("Please press 1 to mute, or 8.", "please press one to mute or eight"),
    ("Dial 42 now", "dial forty two now"),
    ("press * or #", None),  # symbols only with a mapping (below)
    ("[ascending tones]", None),
    ("(3 seconds of silence)", None),
    ("IAX (note: does not say \"2\")", "iax"),
    ("3D audio enabled", None),
    ("a 28.8 kilobit modem", None),
    ("extension 1234", None),
    ("Call-Forward on Busy.", "call forward on busy"),
    ("\u2018Tis the party\u2019s café & bar", "tis the party's cafe and bar"),
    ("...participants in the conference.", "participants in the conference"),
    ("   ", None),
])
def test_normalize_transcript(raw, expected):
    if raw == "press * or #":
        assert transcripts.normalize_transcript(raw) == "press or"
        assert transcripts.normalize_transcript(raw, symbols=sd.ASTERISK_SYMBOLS) == "press star or pound"
        return
    assert transcripts.normalize_transcript(raw) == expected


def test_spell_number():
    assert [transcripts.spell_number(n) for n in (0, 13, 20, 57, 99)] == \
        ["zero", "thirteen", "twenty", "fifty seven", "ninety nine"]
    with pytest.raises(ValueError):
        transcripts.spell_number(100)


def test_parsers():
    text = "; comment\n\nbeep: [tone]\ndigits/1: one\nagent-pass: Enter it: now.\n"
    assert sd.parse_asterisk_transcripts(text) == {
        "beep": "[tone]", "digits/1": "one", "agent-pass": "Enter it: now."}
    sphinx = "<s> ten of clubs  </s> (001)\n<s> he was not </s> (book-0880)\nbad line\n"
    assert sd.parse_sphinx_transcription(sphinx) == {"001": "ten of clubs",
                                                     "book-0880": "he was not"}


# ----------------------------------------------------------------------------- offline corpus

def _fake_packages(root):
    """The unpacked layout of the three Debian packages, marked as already extracted."""
    ext = os.path.join(root, "extracted")
    sounds = os.path.join(ext, "asterisk-core-sounds-en-wav", "usr", "share", "asterisk",
                          "sounds", "en_US_f_Allison")
    prompts = {"vm-goodbye": "Goodbye.", "digits/7": "seven", "beep": "[a beep]",
               "conf-adminmenu": "Please press 1 to mute, 2 to lock.", "missing": "No file."}
    for i, name in enumerate(p for p in prompts if p != "missing"):
        audio.write_wav(os.path.join(sounds, name + ".wav"), _tone(0.5 + 0.25 * i, 8000), 8000)
    doc = os.path.join(ext, "asterisk-core-sounds-en", "usr", "share", "doc",
                       "asterisk-core-sounds-en")
    os.makedirs(doc)
    with gzip.open(os.path.join(doc, "core-sounds-en.txt.gz"), "wt") as f:
        f.write("; Core Asterisk Sounds in English\n\n")
        f.write("".join(f"{k}: {v}\n" for k, v in prompts.items()))
    data = os.path.join(ext, "pocketsphinx-testdata", "usr", "share", "pocketsphinx", "test",
                        "data")
    os.makedirs(os.path.join(data, "librivox"))
    os.makedirs(os.path.join(data, "tidigits"))
    audio.write_wav(os.path.join(data, "librivox", "book-0880.wav"), _tone(1.0, 16000), 16000)
    with open(os.path.join(data, "librivox", "transcription"), "w") as f:
        f.write("<s> he was not an ill disposed young man </s> (book-0880)\n")
    pcm = (_tone(0.6, 16000) * 32767).astype("<i2").tobytes()
    for rel in ("goforward.raw", "tidigits/dhd.2934z.raw"):
        with open(os.path.join(data, rel), "wb") as f:
            f.write(pcm)
    for pkg in ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", "pocketsphinx-testdata"):
        open(os.path.join(ext, pkg, ".extracted"), "w").close()


def _fake_shakespeare(data_dir):
    from coda_flax.datasets import cache
    d = cache.dataset_dir(data_dir, "shakespeare/corpus", {"source": "fake"})
    os.makedirs(d)
    lines = [("HAMLET", "To be, or not to be, that is the question."),
             ("HAMLET", "Whether 'tis nobler in the mind to suffer"),
             ("HAMLET", "The slings and arrows of outrageous fortune."),
             ("OPHELIA", "Good my lord, how does your honour for this many a day?"),
             ("KING", "Henry IV was here: no, no."),
             ("KING", "We have 3 ships at sea today, my lord.")]
    play = {"id": "hamlet", "title": "Hamlet", "genre": "tragedy", "lines": [
        {"act": "ACT I", "scene": "SCENE I", "scene_index": 1, "speaker": s, "text": t}
        for s, t in lines]}
    with open(os.path.join(d, "plays.jsonl"), "w") as f:
        f.write(json.dumps(play) + "\n")
    files = cache.file_hashes(d)
    cache.write_json(os.path.join(d, cache.MANIFEST), {
        "settings": {"source": "fake"}, "files": files,
        "hash": cache.content_hash({"source": "fake"}, files)})


FAKE_ESPEAK = """
import sys, wave
args = sys.argv[1:]
out = args[args.index("-w") + 1]
text = sys.stdin.read()
with wave.open(out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)
    w.writeframes(b"\\x10\\x00\\xf0\\xff" * (len(text) * 300))
"""


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    root = os.path.join(data_dir, "speech")
    _fake_packages(root)
    _fake_shakespeare(data_dir)
    fake = os.path.join(data_dir, "fake_espeak.py")
    with open(fake, "w") as f:
        f.write(FAKE_ESPEAK)
    mp = pytest.MonkeyPatch()
    mp.setattr(sd, "find_espeak", lambda root, log=print: ([sys.executable, fake], None))
    logs = []
    stats = sd.prepare_offline_speech(data_dir, num_espeak=2, log=logs.append)
    mp.undo()
    return data_dir, stats, logs


def test_prepare_offline_speech(offline_dir):
    data_dir, stats, _ = offline_dir
    assert stats["sources"]["asterisk"]["utterances"] == 3   # beep (annotation) and missing out
    assert stats["sources"]["pocketsphinx"]["utterances"] == 3
    assert stats["sources"]["espeak"]["utterances"] == 2
    assert stats["utterances"] == 8 and stats["hours"] > 0
    records = sd.read_manifest(data_dir)
    by_id = {r["id"]: r for r in records}
    assert by_id["asterisk/conf-adminmenu"]["transcript"] == "please press one to mute two to lock"
    assert by_id["pocketsphinx/goforward"]["transcript"] == "go forward ten meters"
    assert by_id["pocketsphinx/tidigits/dhd.2934z"]["transcript"] == "two nine three four zero"
    root = sd.speech_dir(data_dir)
    for r in records:
        assert r["split"] in ("train", "validation")
        feats = np.load(os.path.join(root, r["features"]))
        assert feats.shape == (r["num_frames"], 81) and feats.dtype == np.float32
        wav, sr = audio.read_audio(os.path.join(root, r["audio"]))
        assert sr == 16000 and abs(len(wav) / 16000 - r["duration"]) < 1e-3
        np.testing.assert_allclose(feats, audio.frame_features(wav), atol=1e-5)
    # the 8 kHz prompts of 0.5 s / 1.25 s became 16 kHz
    assert by_id["asterisk/vm-goodbye"]["duration"] == pytest.approx(0.5)
    assert by_id["asterisk/conf-adminmenu"]["duration"] == pytest.approx(1.25)
    espeak = [r for r in records if r["source"] == "espeak"]
    assert all(r["transcript"] in ("to be or not to be that is the question",
                                   "the slings and arrows of outrageous fortune",
                                   "good my lord how does your honour for this many a day",
                                   "whether tis nobler in the mind to suffer the slings and "
                                   "arrows of outrageous fortune") for r in espeak)


def test_prepare_offline_speech_reuses_and_keeps_settings_apart(offline_dir):
    from coda_flax.datasets import cache
    data_dir, stats, _ = offline_dir
    logs = []
    again = sd.prepare_offline_speech(data_dir, num_espeak=2, log=logs.append)
    assert again == stats and any("already prepared" in m for m in logs)
    with_espeak = sd.speech_dir(data_dir)
    # other settings: a second dataset; the first one's files stay as its manifest says
    fewer = sd.prepare_offline_speech(data_dir, espeak=False, log=logs.append)
    assert "espeak" not in fewer["sources"] and fewer["utterances"] == 6
    found = cache.find(data_dir, sd.OFFLINE_DATASET)
    assert len(found) == 2 and with_espeak in found
    assert all(cache.verify(d) == [] for d in found)
    assert len(os.listdir(os.path.join(with_espeak, "audio", "espeak"))) == 2
    with pytest.raises(cache.AmbiguousDatasetError, match="offline speech"):
        sd.speech_dir(data_dir)
    shutil.rmtree(with_espeak)      # the next tests read the one left (as before: no espeak)


def test_shakespeare_sentences(tmp_path):
    _fake_shakespeare(str(tmp_path))
    pairs = sd.shakespeare_sentences(str(tmp_path))
    transcripts = [t for _, t in pairs]
    assert "to be or not to be that is the question" in transcripts
    assert not any("henry" in t or "ships" in t for t in transcripts)  # IV, digits: skipped
    assert sd.shakespeare_sentences(str(tmp_path / "nothing")) == []
    utts = sd.espeak_utterances(pairs, 10)
    assert len(utts) == len(pairs) and utts == sd.espeak_utterances(pairs, 10)
    for u in utts:
        assert u["espeak"]["voice"].split("+")[0] in sd.ESPEAK_VOICES


def test_offline_task_through_seqio(offline_dir):
    data_dir, stats, _ = offline_dir
    speech.register_speech_tasks(data_dir=data_dir)
    task = seqio.get_mixture_or_task("coda_speech_offline")
    vocab = task.output_features["targets"].vocabulary
    records = {r["id"]: r for r in sd.read_manifest(data_dir)}
    seen = 0
    for split in ("train", "validation"):
        ds = task.get_dataset(LENGTHS, split=split, shuffle=False)
        for ex in ds.as_numpy_iterator():
            r = records[ex["id"].decode()]
            assert ex["inputs"].shape == (r["num_frames"], 81)
            assert ex["targets_pretokenized"].decode() == r["transcript"]
            assert vocab.decode(ex["targets"].tolist()) == r["transcript"]
            seen += 1
    assert seen == sum(1 for r in records.values() if r["num_frames"] <= LENGTHS["inputs"])
    ds = seqio.get_dataset("coda_speech_offline", LENGTHS, ContinuousEncDecFeatureConverter(),
                           dataset_split="train", shuffle=False)
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (400, 81)
    assert batch["encoder_input_tokens"].dtype == np.float32
    assert batch["decoder_target_tokens"].shape == (64,)
    frames = int((batch["encoder_input_tokens"][:, 0] > 0).sum())
    np.testing.assert_array_equal(batch["encoder_input_tokens"][:frames, 0],
                                  np.arange(1, frames + 1))
    assert not batch["encoder_input_tokens"][frames:].any()


def test_length_filter_drops_long_examples(offline_dir):
    data_dir, _, _ = offline_dir
    speech.register_speech_tasks(data_dir=data_dir)
    task = seqio.get_mixture_or_task("coda_speech_offline")
    n_all = sum(1 for _ in task.get_dataset({"inputs": 10000, "targets": 1000}, split="train",
                                            shuffle=False))
    short = list(task.get_dataset({"inputs": 80, "targets": 1000}, split="train",
                                  shuffle=False).as_numpy_iterator())
    assert all(ex["inputs"].shape[0] <= 80 for ex in short) and len(short) < n_all
    few_chars = list(task.get_dataset({"inputs": 10000, "targets": 8}, split="train",
                                      shuffle=False).as_numpy_iterator())
    assert all(len(ex["targets"]) <= 8 for ex in few_chars)


def test_missing_offline_manifest(tmp_path):
    speech.register_speech_tasks(data_dir=str(tmp_path / "none"))
    task = seqio.get_mixture_or_task("coda_speech_offline")
    with pytest.raises(sd.MissingSpeechDataError, match="prepare_speech_data.py"):
        task.get_dataset(LENGTHS, split="train")


# ----------------------------------------------------------------------------- debs

# ----------------------------------------------------------------------------- LibriSpeech

LIBRI = {
    "dev-clean": {("84", "121123"): ["GO DO YOU HEAR",
                                     "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE"]},
    "train-clean-100": {("19", "198"): ["NORTHANGER ABBEY", "CHAPTER ONE"],
                        ("26", "495"): ["THE FLOOR'S WET"]},
    "train-clean-360": {("100", "121669"): ["TOM THE PIPER'S SON"]},
    "test-other": {("1688", "142285"): ["THERE WAS A LONG PAUSE"]},
}


@pytest.fixture(scope="module")
def librispeech_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("libri")
    for split, chapters in LIBRI.items():
        for (spk, chap), lines in chapters.items():
            d = base / "LibriSpeech" / split / spk / chap
            d.mkdir(parents=True)
            with open(d / f"{spk}-{chap}.trans.txt", "w") as f:
                for i, text in enumerate(lines):
                    utt = f"{spk}-{chap}-{i:04d}"
                    f.write(f"{utt} {text}\n")
                    soundfile.write(str(d / f"{utt}.flac"), _tone(0.4 + 0.1 * i, 16000, seed=i),
                                    16000, subtype="PCM_16")
    return str(base)


def test_find_librispeech(librispeech_dir, monkeypatch, tmp_path):
    inner = os.path.join(librispeech_dir, "LibriSpeech")
    assert ls.find_librispeech(librispeech_dir) == inner
    assert ls.find_librispeech(inner) == inner
    monkeypatch.setenv(ls.LIBRISPEECH_ENV_VAR, librispeech_dir)
    assert ls.find_librispeech() == inner
    monkeypatch.delenv(ls.LIBRISPEECH_ENV_VAR)
    with pytest.raises(sd.MissingSpeechDataError, match="CODA_LIBRISPEECH_DIR"):
        ls.find_librispeech()
    with pytest.raises(sd.MissingSpeechDataError, match="trans.txt"):
        ls.find_librispeech(str(tmp_path))
    with pytest.raises(sd.MissingSpeechDataError, match="dev-other"):
        ls.librispeech_records(inner, "dev_other")
    recs = ls.librispeech_records(inner, "train")  # train-clean-100 + train-clean-360
    assert [r["id"] for r in recs] == ["19-198-0000", "19-198-0001", "26-495-0000",
                                       "100-121669-0000"]
    assert recs[2]["transcript"] == "the floor's wet" and recs[2]["speaker"] == "26"


def test_librispeech_missing_flac(tmp_path):
    d = tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2"
    d.mkdir(parents=True)
    (d / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(sd.MissingSpeechDataError, match="1-2-0000.flac is missing"):
        ls.librispeech_records(ls.find_librispeech(str(tmp_path)), "validation")


def test_librispeech_task(librispeech_dir, tmp_path):
    data_dir = str(tmp_path / "cache")
    speech.register_speech_tasks(data_dir=data_dir, librispeech_dir=librispeech_dir)
    task = seqio.get_mixture_or_task("coda_librispeech")
    exs = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
    assert [e["targets_pretokenized"].decode() for e in exs] == \
        ["go do you hear", "but in less than five minutes the staircase"]
    assert [e["inputs"].shape for e in exs] == [(38, 81), (48, 81)]
    cached, = glob.glob(os.path.join(data_dir, "speech", "librispeech-*", "features",
                                     "dev-clean", "84", "121123", "84-121123-0000-*.npy"))
    np.testing.assert_allclose(np.load(cached), exs[0]["inputs"])
    assert {e["id"].decode() for e in task.get_dataset(LENGTHS, split="test_other")
            .as_numpy_iterator()} == {"1688-142285-0000"}
    ds = seqio.get_dataset("coda_librispeech", LENGTHS, ContinuousEncDecFeatureConverter(),
                           dataset_split="train", shuffle=False, batch_size=2)
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (2, 400, 81)
    vocab = speech.CharVocabulary()
    assert vocab.decode(batch["decoder_target_tokens"][0].tolist()) == "northanger abbey"
    with pytest.raises(sd.MissingSpeechDataError, match="dev-other"):
        task.get_dataset(LENGTHS, split="dev_other")
    speech.register_speech_tasks(data_dir=data_dir, librispeech_dir=str(tmp_path / "absent"))
    with pytest.raises(sd.MissingSpeechDataError, match="Expected layout"):
        seqio.get_mixture_or_task("coda_librispeech").get_dataset(LENGTHS, split="validation")


def test_prepare_librispeech(librispeech_dir, tmp_path):
    stats = ls.prepare_librispeech(librispeech_dir, str(tmp_path), log=lambda m: None)
    assert stats["validation"]["utterances"] == 2 and stats["train"]["utterances"] == 4
    assert "dev_other" not in stats
    manifest = os.path.join(ls.librispeech_cache_dir(str(tmp_path)), "train", "manifest.jsonl")
    assert len(open(manifest).read().splitlines()) == 4


def test_librispeech_features_are_recomputed_when_the_recording_or_the_settings_change(
        librispeech_dir, tmp_path, monkeypatch):
    """A changed .flac at the same path is featurised again (not read from the stale cache), and
    other feature settings use another folder."""
    import shutil
    root = str(tmp_path / "copy")
    shutil.copytree(librispeech_dir, root)
    data_dir = str(tmp_path / "data")
    cache = ls.librispeech_cache_dir(data_dir)
    record = ls.librispeech_records(ls.find_librispeech(root), "validation")[0]
    first = ls.librispeech_features(record, cache)
    np.testing.assert_array_equal(ls.librispeech_features(record, cache), first)
    soundfile.write(record["audio"], _tone(1.3, 16000, seed=7), 16000, subtype="PCM_16")
    changed = ls.librispeech_features(record, cache)
    assert changed.shape[0] > first.shape[0]          # 1.3 s of audio, not the cached 0.4 s
    want = sd.compute_features(soundfile.read(record["audio"], dtype="float32")[0])
    np.testing.assert_allclose(changed, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setitem(sd.FEATURE_CONFIG, "num_mel_bins", sd.FEATURE_CONFIG["num_mel_bins"] + 1)
    assert ls.librispeech_cache_dir(data_dir) != cache


# ----------------------------------------------------------------------------- metrics

def test_wer_cer_match_jiwer():
    rng = random.Random(0)
    words = "the a cat sat on mat dog ran far away".split()
    refs, hyps = [], []
    for _ in range(30):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        hyp = [w for w in ref if rng.random() > 0.2]
        hyp = [rng.choice(words) if rng.random() < 0.2 else w for w in hyp]
        hyp[rng.randint(0, len(hyp)):0] = [rng.choice(words)] * rng.randint(0, 2)
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    assert metrics.wer(refs, hyps)["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert metrics.cer(refs, hyps)["cer"] == pytest.approx(100 * jiwer.cer(refs, hyps))
    assert metrics.wer(["a b"], ["a b"]) == {"wer": 0.0}
    assert metrics.wer(["a b c"], [""]) == {"wer": 100.0}
    assert metrics.edit_distance("kitten", "sitting") == 3
    with pytest.raises(ValueError):
        metrics.wer(["a"], [])
