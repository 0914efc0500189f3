"""Speech data for the CoDA speech models (paper section 6), without TensorFlow: the offline
corpus built from Debian packages. Transcript normalisation lives in datasets/transcripts.py,
the LibriSpeech reader in datasets/librispeech.py.

Offline corpus (`prepare_offline_speech`; cache <data_dir>/speech, data_dir = $CODA_DATA_DIR or
~/.cache/coda_flax/data), real recordings fetched with `apt-get download` (never installed) and
unpacked with `dpkg-deb -x` (or a pure-Python .deb reader), both by coda_flax.datasets.fetch:

    asterisk    asterisk-core-sounds-en-wav (8 kHz WAV prompts, one speaker: Allison Smith,
                CC-BY-SA-3.0) + asterisk-core-sounds-en (core-sounds-en.txt: "name: transcript")
    pocketsphinx  pocketsphinx-testdata (BSD): 5 LibriVox clips of Sense and Sensibility, 5 "cards"
                utterances (transcription files), goforward.raw ("go forward ten meters", the
                transcript of the package's goforward.gram and of pocketsphinx's own tests) and
                tidigits/dhd.2934z.raw ("two nine three four zero", as tidigits.lsn and the tests);
                numbers.raw / something.raw ship no transcript and are skipped
    espeak      optional: espeak-ng synthesis of Shakespeare sentences (datasets.shakespeare,
                when that corpus is prepared) with several voices, speeds and pitches; espeak-ng
                from PATH, else unpacked from its Debian packages and run with LD_LIBRARY_PATH

Transcripts are normalised to the CharVocabulary alphabet (normalize_transcript): lowercase a-z,
space and apostrophe. Standalone numbers 0-99 are spelled out ("press 7" -> "press seven"); an
utterance with any other digit (3D, 28.8, 1234) is dropped, as are pure annotations
("[ascending tones]", "(3 seconds of silence)"). Asterisk's spoken keypad symbols become words
(* -> star, # -> pound). Everything is resampled to 16 kHz (frontends.audio.SAMPLE_RATE).

Cache layout (<data_dir>/speech; the corpus is a dataset of coda_flax.datasets.cache, a folder
per settings with a manifest.json: settings, row counts, SHA-256 of each file):
    debs/*.deb                      downloaded packages (SHA-256: DEBIAN_SHA256, else apt's)
    extracted/<package>/            dpkg-deb -x of each data package
    espeak/root/                    espeak-ng and its libraries (when not installed)
  offline-<key>/
    audio/<source>/<name>.wav       16 kHz mono 16-bit audio of every utterance
    features/<source>/<name>.npy    float32 [frames, 1 + 80]: frame index, log-mel
                                    (coda_flax.frontends.audio)
    manifest.jsonl                  one record per utterance: id, source, speaker, split,
                                    transcript, raw_transcript, audio, features, duration,
                                    num_frames (paths relative to the speech directory)
    stats.json                      utterances / hours per source and split, length percentiles
  librispeech-<key>/                keyed by the feature settings (prepare_librispeech,
    <split>/manifest.jsonl,         datasets/librispeech.py)
    features/<split>/<speaker>/<chapter>/<id>-<source>.npy
Splits: "train" / "validation" from an md5 hash of the prompt (asterisk), utterance id
(pocketsphinx) or sentence text (espeak: the same sentence never lands in both splits).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from coda_flax.datasets.fetch import (default_data_dir, extract_deb, fetch_and_extract,
                                      fetch_debian_package)
from coda_flax.datasets.records import read_jsonl, split_of, write_jsonl
from coda_flax.datasets.transcripts import APOSTROPHES, normalize_transcript
from coda_flax.frontends.audio import NUM_MEL_BINS, SAMPLE_RATE

SPEECH_SUBDIR = "speech"
OFFLINE_DATASET = "speech/offline"   # <data_dir>/speech/offline-<key> (coda_flax.datasets.cache)
FORMAT_VERSION = 2  # bump when the manifest layout, normalisation or features change
FEATURE_DIM = 1 + NUM_MEL_BINS
FEATURE_CONFIG = {"sample_rate": SAMPLE_RATE, "num_mel_bins": NUM_MEL_BINS,
                  "frame_length_ms": 25.0, "frame_step_ms": 10.0, "lower_hz": 125.0,
                  "upper_hz": 7600.0, "log_offset": 1e-6, "power": 2.0}

# Debian bookworm packages seen when this was written: file -> SHA-256. Other versions are checked
# against the SHA256 apt's package lists give (fetch.verify_deb), else accepted with a notice.
DEBIAN_SHA256 = {
    "asterisk-core-sounds-en-wav_1.6.1-1_all.deb":
        "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
    "asterisk-core-sounds-en_1.6.1-1_all.deb":
        "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
    "pocketsphinx-testdata_0.8+5prealpha+1-15_all.deb":
        "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0",
    "espeak-ng_1.51+dfsg-10+deb12u2_amd64.deb":
        "a11396a690f85f55e6e6b2965505237ddf3dc95c51936aa61de936f1ccf8f4d0",
    "espeak-ng-data_1.51+dfsg-10+deb12u2_amd64.deb":
        "573f5661c6a5adcf949018baad158c4c773bf5579390ee5235a890f1cd694106",
    "libespeak-ng1_1.51+dfsg-10+deb12u2_amd64.deb":
        "2b127a95b50d92cbd7a615968d2ac1566e1cbc87e27bcda0c2894afb2407c6d2",
    "libpcaudio0_1.2-2_amd64.deb":
        "5309759e4d129c7d9a601240cc6e62820ecfa86a1a98e207992ffa6a572dbcd2",
    "libsonic0_0.2.0-12_amd64.deb":
        "9d60de6918ace0b10e3e4e95421befd08aaf03b5b2a3d71ceb799e0cf259916f",
    "libpulse0_16.1+dfsg1-2+b1_amd64.deb":
        "7b2c5403cb726312219aad678becc6d6adcee1d8694fdffce0b6ec15ae010831",
    "libasyncns0_0.8-6+b3_amd64.deb":
        "cadaff99f4178b1f580331045621b363abaaefc994e78eecba1857774a3cead2",
    "libsndfile1_1.2.0-1+deb12u1_amd64.deb":
        "02dc3f08fe8476e82e005f412e3b7289ff641180f33a9be8073f4bde61c85e8e",
    "libflac12_1.4.2+ds-2_amd64.deb":
        "4d8431c274eef13ec9ee2c0bf988c34b4342367dec053b7f69a432525be5b1fe",
    "libvorbis0a_1.3.7-1_amd64.deb":
        "01c14f9d1109650077a4c5c337c285476a6932d4d448f5a190c2b845724dbf21",
    "libvorbisenc2_1.3.7-1_amd64.deb":
        "75dd4d6f904c7db82f5112e60d8efea9e81dfedf94e970c5da7af2b3d81643c0",
    "libopus0_1.3.1-3_amd64.deb":
        "c172e212f9039e741916aa8e12f3670d1e049dc0c16685325641288c2d83faa7",
    "libogg0_1.3.5-3_amd64.deb":
        "f67acb0477aed0354f411172e37af338f3ac6bd4f3766134a2cf5539884b5a28",
    "libmpg123-0_1.31.2-1+deb12u1_amd64.deb":
        "a10ad0d59995b859797a5f20d2833672051d0b2c7dab4c71f2e79258b2e3f631",
    "libmp3lame0_3.100-6_amd64.deb":
        "b1292c749172e7623547ecf684da57d3ec6ca22109f08b11bbb9e6be6e6beb95",
}
ASTERISK_PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
POCKETSPHINX_PACKAGE = "pocketsphinx-testdata"
# espeak-ng and the shared libraries it links that a minimal Debian image lacks (libpcaudio0
# pulls in PulseAudio and libsndfile's codecs although only WAV output is used).
ESPEAK_PACKAGES = ("espeak-ng", "espeak-ng-data", "libespeak-ng1", "libpcaudio0", "libsonic0",
                   "libpulse0", "libasyncns0", "libsndfile1", "libflac12", "libvorbis0a",
                   "libvorbisenc2", "libopus0", "libogg0", "libmpg123-0", "libmp3lame0")
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("", "+f2", "+f3", "+f4", "+m3", "+m7")
ESPEAK_SPEEDS = (130, 145, 160, 175, 190)  # words per minute
ESPEAK_PITCHES = (35, 45, 55, 65)
# pocketsphinx-testdata raw files with a known transcript (16 kHz 16-bit little-endian PCM).
POCKETSPHINX_RAW = {"goforward.raw": "go forward ten meters",
                    "tidigits/dhd.2934z.raw": "two nine three four zero"}
ASTERISK_SYMBOLS = {"*": " star ", "#": " pound "}

Log = Callable[[str], None]


class MissingSpeechDataError(FileNotFoundError):
    """A speech corpus is not where it was looked for."""


# ----------------------------------------------------------------------------- cache

def speech_dir(data_dir: Optional[str] = None) -> str:
    """The offline corpus prepared under data_dir (default: $CODA_DATA_DIR or
    ~/.cache/coda_flax/data): data_dir itself when it already holds a manifest.jsonl, else the
    only <data_dir>/speech/offline-<key> (AmbiguousDatasetError naming them when several
    settings were prepared), else the pattern of the folder it would be."""
    from coda_flax.datasets import cache

    data_dir = data_dir or default_data_dir()
    if os.path.exists(os.path.join(data_dir, "manifest.jsonl")):
        return data_dir
    return cache.find_one(data_dir, OFFLINE_DATASET, "offline speech") or os.path.join(
        data_dir, SPEECH_SUBDIR, "offline-*")


# ----------------------------------------------------------------------------- sources

def parse_asterisk_transcripts(text: str) -> dict[str, str]:
    """core-sounds-en.txt -> {prompt name: transcript}; ';' lines are comments."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, transcript = line.split(":", 1)
        out[name.strip()] = transcript.strip()
    return out


def asterisk_utterances(sounds_dir: str, transcripts: dict[str, str]) -> list[dict]:
    """Asterisk prompts with a transcript: {id, source, speaker, split, raw_transcript,
    transcript, original_audio, raw_sample_rate}; the split hashes the prompt name."""
    out = []
    for name in sorted(transcripts):
        wav = os.path.join(sounds_dir, name + ".wav")
        transcript = normalize_transcript(transcripts[name], symbols=ASTERISK_SYMBOLS)
        if not os.path.exists(wav) or transcript is None:
            continue
        out.append({"id": f"asterisk/{name}", "source": "asterisk", "speaker": "allison",
                    "split": split_of(f"asterisk/{name}"), "raw_transcript": transcripts[name],
                    "transcript": transcript, "original_audio": wav})
    return out


def _asterisk_sounds_dir(root: str) -> str:
    """The voice directory holding the most WAV files under usr/share/asterisk/sounds."""
    base = os.path.join(root, "usr", "share", "asterisk", "sounds")
    best, count = None, 0
    for d in (sorted(os.listdir(base)) if os.path.isdir(base) else []):
        n = sum(f.endswith(".wav") for _, _, fs in os.walk(os.path.join(base, d)) for f in fs)
        if n > count:
            best, count = os.path.join(base, d), n
    if best is None:
        raise MissingSpeechDataError(f"no asterisk WAV prompts under {base}")
    return best


def asterisk_source(root: str, *, log: Log = print) -> list[dict]:
    wav_root = fetch_and_extract(ASTERISK_PACKAGES[0], root, known_sha256=DEBIAN_SHA256, log=log)
    txt_root = fetch_and_extract(ASTERISK_PACKAGES[1], root, known_sha256=DEBIAN_SHA256, log=log)
    txt = os.path.join(txt_root, "usr", "share", "doc", "asterisk-core-sounds-en",
                       "core-sounds-en.txt.gz")
    if not os.path.exists(txt):
        raise MissingSpeechDataError(f"asterisk transcripts not found at {txt}")
    with gzip.open(txt, "rt", encoding="utf-8", errors="replace") as f:
        transcripts = parse_asterisk_transcripts(f.read())
    utts = asterisk_utterances(_asterisk_sounds_dir(wav_root), transcripts)
    log(f"[speech] asterisk: {len(utts)} of {len(transcripts)} prompts usable")
    return utts


_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^()]+)\)\s*$")


def parse_sphinx_transcription(text: str) -> dict[str, str]:
    """CMU Sphinx transcription file ("<s> words </s> (utt-id)" per line) -> {utt-id: words}."""
    out = {}
    for line in text.splitlines():
        m = _SPHINX_LINE.match(line)
        if m:
            out[m.group(2).strip()] = " ".join(m.group(1).split())
    return out


def pocketsphinx_utterances(data_dir: str) -> list[dict]:
    """Utterances of pocketsphinx-testdata's test/data directory: librivox/ and cards/ (WAV +
    transcription) and the raw files of POCKETSPHINX_RAW."""
    out = []
    for sub, trans in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = os.path.join(data_dir, sub, trans)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for utt, words in sorted(parse_sphinx_transcription(f.read()).items()):
                wav = os.path.join(data_dir, sub, utt + ".wav")
                transcript = normalize_transcript(words)
                if os.path.exists(wav) and transcript:
                    out.append({"id": f"pocketsphinx/{sub}/{utt}", "speaker": sub,
                                "raw_transcript": words, "transcript": transcript,
                                "original_audio": wav})
    for rel, words in POCKETSPHINX_RAW.items():
        raw = os.path.join(data_dir, rel)
        if os.path.exists(raw):
            name = os.path.splitext(rel)[0]
            out.append({"id": f"pocketsphinx/{name}", "speaker": name.split("/")[0],
                        "raw_transcript": words, "transcript": normalize_transcript(words),
                        "original_audio": raw, "raw_sample_rate": SAMPLE_RATE})
    for u in out:
        u.update(source="pocketsphinx", split=split_of(u["id"]))
    return out


def pocketsphinx_source(root: str, *, log: Log = print) -> list[dict]:
    extracted = fetch_and_extract(POCKETSPHINX_PACKAGE, root, known_sha256=DEBIAN_SHA256, log=log)
    data_dir = os.path.join(extracted, "usr", "share", "pocketsphinx", "test", "data")
    if not os.path.isdir(data_dir):
        raise MissingSpeechDataError(f"pocketsphinx test data not found at {data_dir}")
    utts = pocketsphinx_utterances(data_dir)
    log(f"[speech] pocketsphinx: {len(utts)} utterances with transcripts")
    return utts


# --- espeak-ng synthesis

def find_espeak(root: str, *, log: Log = print) -> Optional[tuple[list[str], dict]]:
    """(command prefix, environment) of a working espeak-ng: from PATH, else unpacked from its
    Debian packages under <root>/espeak/root. None (with the reason logged) if neither works."""
    def works(cmd, env):
        try:
            proc = subprocess.run(cmd + ["--version"], capture_output=True, text=True, env=env,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()[-500:]

    if shutil.which("espeak-ng"):
        if works(["espeak-ng"], None) is None:
            return ["espeak-ng"], dict(os.environ)
    local = os.path.join(root, "espeak", "root")
    lib = os.path.join(local, "usr", "lib", "x86_64-linux-gnu")
    try:
        if not os.path.exists(os.path.join(local, ".extracted")):
            for package in ESPEAK_PACKAGES:
                deb = fetch_debian_package(package, os.path.join(root, "debs"),
                                           known_sha256=DEBIAN_SHA256, log=log)
                extract_deb(deb, local, log=log)
            open(os.path.join(local, ".extracted"), "w").close()
    except (RuntimeError, ValueError, OSError) as e:
        log(f"[speech] espeak-ng unavailable (could not fetch its packages: {e}); continuing "
            "without synthesised speech")
        return None
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(
        [lib, os.path.join(lib, "pulseaudio"), os.environ.get("LD_LIBRARY_PATH", "")]))
    cmd = [os.path.join(local, "usr", "bin", "espeak-ng"), f"--path={lib}"]
    error = works(cmd, env)
    if error is not None:
        log(f"[speech] espeak-ng unpacked under {local} does not run ({error}); continuing "
            "without synthesised speech (apt-get install espeak-ng would provide it)")
        return None
    return cmd, env


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_ESPEAK_OK = re.compile(r"^[A-Za-z' ,.;:!?\-]+$")
_ABBREVIATIONS = {"mr", "mrs", "dr", "st", "etc", "viz"}


def _speakable(sentence: str, min_words: int, max_words: int) -> Optional[str]:
    """The normalised transcript of a sentence espeak-ng reads literally, else None."""
    sentence = sentence.strip().translate(APOSTROPHES)
    if not _ESPEAK_OK.match(sentence) or "--" in sentence:
        return None
    words = re.findall(r"[A-Za-z']+", sentence)
    if not min_words <= len(words) <= max_words:
        return None
    for w in words:  # roman numerals / acronyms ("IV") and abbreviations are read differently
        if (len(w) > 1 and w.isupper()) or w.lower().strip("'") in _ABBREVIATIONS:
            return None
    return normalize_transcript(sentence)


def shakespeare_sentences(data_dir: Optional[str] = None, *, min_words: int = 4,
                          max_words: int = 24) -> list[tuple[str, str]]:
    """(sentence, transcript) pairs from the prepared Shakespeare corpus (plays.jsonl): speeches
    split at . ! ? ; : and kept when espeak-ng reads them literally; unique by transcript. []
    when the corpus is not prepared."""
    from coda_flax.datasets.shakespeare import corpus_dir

    path = os.path.join(corpus_dir(data_dir), "plays.jsonl")
    if not os.path.exists(path):
        return []
    seen, out = set(), []
    for play in read_jsonl(path):
        speech, key = [], None
        for line in play["lines"] + [{"scene_index": None, "speaker": None, "text": ""}]:
            k = (line["scene_index"], line["speaker"])
            if k != key and speech:
                for sentence in _SENTENCE_END.split(" ".join(speech)):
                    transcript = _speakable(sentence, min_words, max_words)
                    if transcript and transcript not in seen:
                        seen.add(transcript)
                        out.append((sentence.strip(), transcript))
                speech = []
            key = k
            if line["text"]:
                speech.append(line["text"])
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def espeak_utterances(sentences: Sequence[tuple[str, str]], num: int) -> list[dict]:
    """`num` sentences chosen by a hash of their transcript (independent of the split hash), each
    with a voice, variant, speed and pitch drawn from another hash (deterministic). Records carry
    "text" (what is spoken) and the espeak settings."""
    chosen = sorted(sentences, key=lambda s: _md5("espeak-select/" + s[1]))[:num]
    out = []
    for sentence, transcript in chosen:
        h = int(_md5("espeak-voice/" + transcript)[:12], 16)
        voice = ESPEAK_VOICES[h % len(ESPEAK_VOICES)] + \
            ESPEAK_VARIANTS[(h // 7) % len(ESPEAK_VARIANTS)]
        speed = ESPEAK_SPEEDS[(h // 53) % len(ESPEAK_SPEEDS)]
        pitch = ESPEAK_PITCHES[(h // 311) % len(ESPEAK_PITCHES)]
        out.append({"id": f"espeak/{_md5(transcript)[:16]}", "source": "espeak",
                    "speaker": voice, "split": split_of(transcript), "text": sentence,
                    "raw_transcript": sentence, "transcript": transcript,
                    "espeak": {"voice": voice, "speed": speed, "pitch": pitch}})
    return out


def synthesize(cmd: list[str], env: dict, text: str, settings: dict, out_wav: str) -> None:
    """espeak-ng -v VOICE -s SPEED -p PITCH -w out.wav, text on stdin."""
    proc = subprocess.run(cmd + ["-v", settings["voice"], "-s", str(settings["speed"]),
                                 "-p", str(settings["pitch"]), "-w", out_wav],
                          input=text, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0 or not os.path.exists(out_wav):
        raise RuntimeError(f"espeak-ng failed on {text!r}: {proc.stderr.strip()[-500:]}")


# ----------------------------------------------------------------------------- features

def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def compute_features(waveform: np.ndarray) -> np.ndarray:
    """coda_flax.frontends.audio.frame_features with FEATURE_CONFIG (16 kHz input)."""
    from coda_flax.frontends.audio import frame_features

    cfg = {k: v for k, v in FEATURE_CONFIG.items() if k not in ("sample_rate", "num_mel_bins")}
    return frame_features(waveform, FEATURE_CONFIG["sample_rate"],
                          FEATURE_CONFIG["num_mel_bins"], **cfg)


def materialise(record: dict, root: str, *, waveform: Optional[np.ndarray] = None) -> dict:
    """Writes audio/<id>.wav (16 kHz) and features/<id>.npy for a record (both reused when
    present) and fills in audio, features, duration, num_frames."""
    from coda_flax.frontends.audio import load_waveform, read_audio, write_wav

    name = record["id"]
    audio_rel = os.path.join("audio", name + ".wav")
    feat_rel = os.path.join("features", name + ".npy")
    audio_path, feat_path = os.path.join(root, audio_rel), os.path.join(root, feat_rel)
    if os.path.exists(audio_path):
        waveform, sr = read_audio(audio_path)
        if sr != SAMPLE_RATE:
            raise RuntimeError(f"{audio_path} is not {SAMPLE_RATE} Hz; delete it to rebuild")
    else:
        if waveform is None:
            waveform = load_waveform(record["original_audio"], SAMPLE_RATE,
                                     raw_sample_rate=record.get("raw_sample_rate"))
        write_wav(audio_path, waveform, SAMPLE_RATE)
        waveform, _ = read_audio(audio_path)  # features of exactly what is stored
    if os.path.exists(feat_path):
        frames = int(np.load(feat_path, mmap_mode="r").shape[0])
    else:
        features = compute_features(waveform)
        _atomic_save_npy(feat_path, features)
        frames = features.shape[0]
    out = {k: v for k, v in record.items() if k not in ("original_audio", "raw_sample_rate")}
    out.update(audio=audio_rel, features=feat_rel, duration=round(len(waveform) / SAMPLE_RATE, 4),
               num_frames=frames, original_audio=os.path.relpath(record["original_audio"], root)
               if "original_audio" in record else None)
    return out


# ----------------------------------------------------------------------------- the corpus

def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else 0.0


def manifest_stats(records: Sequence[dict]) -> dict:
    """Utterances / hours per source and split; frame and character length percentiles."""
    stats: dict = {"utterances": len(records),
                   "hours": round(sum(r["duration"] for r in records) / 3600.0, 4),
                   "sources": {}, "splits": {}}
    for key, field in (("sources", "source"), ("splits", "split")):
        for value in sorted({r[field] for r in records}):
            rs = [r for r in records if r[field] == value]
            stats[key][value] = {"utterances": len(rs),
                                 "hours": round(sum(r["duration"] for r in rs) / 3600.0, 4)}
    frames = [r["num_frames"] for r in records]
    chars = [len(r["transcript"]) for r in records]
    stats.update(frames_p50=_percentile(frames, 50), frames_p98=_percentile(frames, 98),
                 frames_max=max(frames, default=0), chars_p50=_percentile(chars, 50),
                 chars_p98=_percentile(chars, 98), chars_max=max(chars, default=0))
    return stats


def prepare_offline_speech(data_dir: Optional[str] = None, *, espeak: bool = True,
                           num_espeak: int = 1500, force: bool = False,
                           log: Log = print) -> dict:
    """Builds (once) the offline speech corpus: Debian packages fetched and unpacked under
    <data_dir>/speech, every utterance resampled to 16 kHz, features precomputed, manifest.jsonl
    and stats.json written into a dataset of coda_flax.datasets.cache,
    <data_dir>/speech/offline-<key> (key: the settings and, with espeak, the Shakespeare
    corpus' hash). The same settings reuse it while its files match its manifest.json;
    force=True rebuilds it. Returns the statistics."""
    from coda_flax.datasets import cache
    from coda_flax.datasets.shakespeare import corpus_dir

    src = os.path.join(data_dir or default_data_dir(), SPEECH_SUBDIR)
    settings = {"format_version": FORMAT_VERSION, "features": FEATURE_CONFIG,
                "espeak_requested": bool(espeak), "num_espeak": int(num_espeak) if espeak else 0}
    corpus = cache.read_manifest(corpus_dir(data_dir)) if espeak else None
    key = dict(settings, shakespeare=corpus and corpus["hash"])

    def build(root):
        records = []
        for name, source in (("asterisk", asterisk_source), ("pocketsphinx", pocketsphinx_source)):
            utts = source(src, log=log)
            for i, u in enumerate(utts):
                records.append(materialise(u, root))
                if (i + 1) % 100 == 0 or i + 1 == len(utts):
                    log(f"[speech] {name}: {i + 1}/{len(utts)} utterances resampled + featurised")
        espeak_note = "not requested"
        if espeak:
            records_espeak, espeak_note = _espeak_records(src, root, data_dir, num_espeak, log)
            records.extend(records_espeak)
        records.sort(key=lambda r: r["id"])
        write_jsonl(os.path.join(root, "manifest.jsonl"), records)
        stats = dict(manifest_stats(records), espeak=espeak_note, **settings)
        cache.write_json(os.path.join(root, "stats.json"), stats)
        log(f"[speech] wrote {len(records)} utterances ({stats['hours']:.2f} h) to "
            f"{os.path.join(root, 'manifest.jsonl')}")
        return {"rows": {s: v["utterances"] for s, v in stats["splits"].items()}}

    prepared = cache.prepare(data_dir, OFFLINE_DATASET, key, build, force=force, log=log)
    with open(os.path.join(prepared["dir"], "stats.json")) as f:
        return json.load(f)


def _espeak_records(src: str, root: str, data_dir: Optional[str], num: int, log: Log
                    ) -> tuple[list[dict], str]:
    """espeak-ng (found or unpacked under src) reading Shakespeare sentences, into root."""
    sentences = shakespeare_sentences(data_dir)
    if not sentences:
        msg = ("skipped: the Shakespeare corpus is not prepared (python scripts/prepare_data.py), "
               "so there are no sentences to synthesise")
        log("[speech] espeak " + msg)
        return [], msg
    found = find_espeak(src, log=log)
    if found is None:
        return [], "skipped: espeak-ng could not be run (see the log)"
    cmd, env = found
    from coda_flax.frontends.audio import read_audio, resample

    utts = espeak_utterances(sentences, num)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, u in enumerate(utts):
            waveform = None
            if not os.path.exists(os.path.join(root, "audio", u["id"] + ".wav")):
                raw = os.path.join(tmp, "utt.wav")
                synthesize(cmd, env, u["text"], u["espeak"], raw)
                waveform, sr = read_audio(raw)
                waveform = resample(waveform, sr, SAMPLE_RATE)
            records.append(materialise(u, root, waveform=waveform))
            if (i + 1) % 100 == 0 or i + 1 == len(utts):
                log(f"[speech] espeak: {i + 1}/{len(utts)} sentences synthesised + featurised")
    return records, f"{len(records)} sentences from {len(sentences)} candidates"


def read_manifest(data_dir: Optional[str] = None) -> list[dict]:
    """The records of <data_dir>/speech/manifest.jsonl; MissingSpeechDataError names the fix."""
    path = os.path.join(speech_dir(data_dir), "manifest.jsonl")
    if not os.path.exists(path):
        raise MissingSpeechDataError(
            f"offline speech manifest not found: {path}. Prepare it with `python "
            f"scripts/prepare_speech_data.py` (fetches Debian packages with apt-get download; "
            "--data-dir or $CODA_DATA_DIR choose where).")
    return read_jsonl(path)


def iterate_examples(records: Sequence[dict], load: Callable[[dict], np.ndarray], *,
                     shuffle: bool = False, seed: Optional[int] = None
                     ) -> Iterator[dict]:
    """{"inputs": features, "targets": transcript, "id", "speaker", "source"} per record (the
    order shuffled when asked)."""
    order = np.arange(len(records))
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    for i in order:
        r = records[int(i)]
        yield {"inputs": load(r), "targets": r["transcript"], "id": r["id"],
               "speaker": r.get("speaker", ""), "source": r.get("source", "")}


__all__ = [
    "FEATURE_CONFIG", "FEATURE_DIM", "MissingSpeechDataError", "speech_dir",
    "prepare_offline_speech", "read_manifest", "iterate_examples", "parse_asterisk_transcripts",
    "parse_sphinx_transcription", "shakespeare_sentences", "find_espeak", "manifest_stats",
    "compute_features",
]
