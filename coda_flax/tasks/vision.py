"""seqio tasks of CoDA's vision experiments (paper section 6, Table 6) in Pix2Struct's format.

Inputs are Pix2Struct patches (coda_flax.frontends.patches, tf_patchify here for tf.data):
float32 [max_patches, 2 + p*p*3] (row id, column id, RGB pixels; zero rows = padding;
p = register_vision_tasks(patch_size=16), which must match ModelConfig.patch_size); for visual
question answering the question is rendered as a header above the image first (Pix2Struct
section 2.5). Targets are text, by default in seqio.ByteVocabulary (pad 0, eos 1, one id per
UTF-8 byte). Use them with coda_flax.tasks.features.ContinuousEncDecFeatureConverter.

    coda_easy_vqa        easy-VQA (PyPI easy-vqa==1.0): question header + 64x64 shapes -> answer
    coda_rendered_docs   synthetic pages with a Shakespeare snippet -> its transcription
    coda_ocrvqa          OCR-VQA (Mishra et al. 2019): book cover + question -> answer      (EM)
    coda_docvqa          DocVQA (Mathew et al. 2021): document page + question -> answer  (ANLS)
    coda_screen2words    Screen2Words (Wang et al. 2021): RICO screenshot -> summary     (CIDEr)

The first two are prepared offline by scripts/prepare_vision_data.py under $CODA_DATA_DIR
(coda_flax.datasets.vision). The last three are read from a local copy in their published
layout (see OCRVQA_LAYOUT / DOCVQA_LAYOUT / SCREEN2WORDS_LAYOUT): pass ocrvqa_dir= / docvqa_dir= /
screen2words_dir= to register_vision_tasks, or set $CODA_OCRVQA_DIR / $CODA_DOCVQA_DIR /
$CODA_SCREEN2WORDS_DIR, or put them in ocrvqa/, docvqa/, screen2words/ under one directory given
as vision_data_dir= or $CODA_VISION_DATA_DIR. Nothing is read until a dataset is asked for.

Examples carry, besides "inputs" and "targets": "id", "image" (the file path; the pixels stay
out of the example), "targets_pretokenized", "answers" (every acceptable answer / reference
summary, for the metrics) and, for VQA, "question"; rendered documents also "bbox" and "ink"
(bool [max_patches]: patches with text, coda_flax.frontends.patches.patch_ink).
"""

from __future__ import annotations

import csv
import functools
import os
import random
from typing import Callable, Mapping, Optional, Union

import numpy as np
import seqio

from coda_flax.datasets import provenance
from coda_flax.datasets import vision as vision_data
from coda_flax.datasets.vision import MissingVisionDataError
from coda_flax.frontends import patches as patching
from coda_flax.tasks import metrics
from coda_flax.tasks._tf import tf
from coda_flax.tasks.features import TASK_FEATURE_LENGTHS, continuous_output_features
from coda_flax.tasks.registry import add_task

VISION_TASKS = ("coda_easy_vqa", "coda_rendered_docs", "coda_rendered_words", "coda_ocrvqa",
                "coda_docvqa", "coda_screen2words")
PATCH_SIZE = 16
NUM_CHANNELS = 3
# inputs = max_patches, targets = bytes + EOS: coda_flax.tasks.features.TASK_FEATURE_LENGTHS.
VISION_FEATURE_LENGTHS = {name: TASK_FEATURE_LENGTHS[name] for name in VISION_TASKS}
DEFAULT_MAX_PATCHES = {name: v["inputs"] for name, v in VISION_FEATURE_LENGTHS.items()}
TARGET_LENGTHS = {name: v["targets"] for name, v in VISION_FEATURE_LENGTHS.items()}
VISION_DATA_DIR_ENV_VAR = "CODA_VISION_DATA_DIR"
SPLITS = ("train", "validation")
SPLITS_WITH_TEST = ("train", "validation", "test")

OCRVQA_LAYOUT = """OCR-VQA (https://ocr-vqa.github.io):
    <dir>/dataset.json    {"<image id>": {"imageURL": ..., "questions": [...], "answers": [...],
                           "title": ..., "authorName": ..., "genre": ..., "split": 1 | 2 | 3}}
                           (split 1 = train, 2 = validation, 3 = test)
    <dir>/images/<image id><extension of imageURL>   (as the dataset's loadDataset.py saves them)"""
DOCVQA_LAYOUT = """DocVQA Task 1 (https://rrc.cvc.uab.es/?ch=17):
    <dir>/{train,val,test}/{train,val,test}_v1.0.json   {"data": [{"questionId", "question",
                           "image": "documents/<name>.png", "answers": [...]}, ...]}
                           (test has no answers; the JSON may also sit directly in <dir>)
    <dir>/{train,val,test}/documents/*.png                 (paths relative to the JSON file)"""
SCREEN2WORDS_LAYOUT = """Screen2Words (https://github.com/google-research-datasets/screen2words)
with the RICO screenshots (http://interactionmining.org/rico, unique_uis.tar.gz):
    <dir>/screen_summaries.csv                 screenId,summary (5 summaries per screen)
    <dir>/split/{train,dev,test}_screens.txt   one screenId per line
    <dir>/combined/<screenId>.jpg              RICO screenshots (or <dir>/images/)"""

_DATASETS = {  # name: (env var, sub-directory names under vision_data_dir, layout)
    "ocrvqa": ("CODA_OCRVQA_DIR", ("ocrvqa", "ocr_vqa", "OCR-VQA"), OCRVQA_LAYOUT),
    "docvqa": ("CODA_DOCVQA_DIR", ("docvqa", "DocVQA"), DOCVQA_LAYOUT),
    "screen2words": ("CODA_SCREEN2WORDS_DIR", ("screen2words", "Screen2Words"),
                     SCREEN2WORDS_LAYOUT),
}


# ----------------------------------------------------------------------------- local datasets

def dataset_dir(name: str, explicit: Optional[str] = None,
                vision_data_dir: Optional[str] = None) -> str:
    """Where dataset `name` (ocrvqa / docvqa / screen2words) is read from: explicit, else
    $CODA_<NAME>_DIR, else the first existing <vision_data_dir or $CODA_VISION_DATA_DIR>/<sub>."""
    env_var, subdirs, _ = _DATASETS[name]
    if explicit:
        return explicit
    if os.environ.get(env_var):
        return os.environ[env_var]
    root = vision_data_dir or os.environ.get(VISION_DATA_DIR_ENV_VAR)
    if not root:
        return ""
    for sub in subdirs:
        if os.path.isdir(os.path.join(root, sub)):
            return os.path.join(root, sub)
    return os.path.join(root, subdirs[0])


def _missing_dataset(name: str, directory: str, what: str) -> MissingVisionDataError:
    env_var, subdirs, layout = _DATASETS[name]
    where = f"{what} in {directory!r}" if directory else "no directory was given"
    return MissingVisionDataError(
        f"{name}: {where}. Expected the published layout of {layout}\n"
        f"Point coda_flax at it with register_vision_tasks({name}_dir=...), ${env_var}, or "
        f"${VISION_DATA_DIR_ENV_VAR} (a directory holding {subdirs[0]}/). The data is not "
        f"redistributed with coda_flax: download it from the address above.")


def _first_existing(paths) -> Optional[str]:
    for p in paths:
        if os.path.exists(p):
            return p
    return None


def read_ocrvqa(directory: str, split: str) -> list[dict]:
    """One record per (book cover, question) of a split; covers whose image file is missing (dead
    URLs) are skipped, an error if none is left."""
    path = os.path.join(directory, "dataset.json") if directory else ""
    if not path or not os.path.exists(path):
        raise _missing_dataset("ocrvqa", directory, "dataset.json not found")
    code = {"train": 1, "validation": 2, "test": 3}[split]
    data = _load_json(path, os.path.getmtime(path))
    records, missing = [], 0
    for key in sorted(data):
        entry = data[key]
        if int(entry.get("split", 0)) != code:
            continue
        ext = os.path.splitext(entry.get("imageURL", ""))[1] or ".jpg"
        image = _first_existing(os.path.join(directory, "images", key + e)
                                for e in dict.fromkeys((ext, ".jpg", ".png", ".gif")))
        if image is None:
            missing += 1
            continue
        for i, (q, a) in enumerate(zip(entry["questions"], entry["answers"])):
            records.append({"id": f"{key}/{i}", "image": image, "question": q, "answers": [a]})
    if not records:
        raise _missing_dataset("ocrvqa", directory, f"no {split} image found under images/ "
                                                    f"({missing} covers missing)")
    return records


def read_docvqa(directory: str, split: str) -> list[dict]:
    """One record per question of a split (val -> "validation"); the test split has no answers."""
    name = {"train": "train", "validation": "val", "test": "test"}[split]
    candidates = [os.path.join(d, f"{name}_v1.0{suffix}.json")
                  for d in (os.path.join(directory, name), directory,
                            os.path.join(directory, "spdocvqa_qas"))
                  for suffix in ("", "_withQT")] if directory else []
    path = _first_existing(candidates)
    if path is None:
        raise _missing_dataset("docvqa", directory, f"{name}_v1.0.json not found")
    base = os.path.dirname(path)
    records, missing = [], 0
    for entry in _load_json(path, os.path.getmtime(path))["data"]:
        rel = entry["image"]
        image = _first_existing([os.path.join(base, rel), os.path.join(directory, rel),
                                 os.path.join(directory, name, rel),
                                 os.path.join(directory, "spdocvqa_images",
                                              os.path.basename(rel))])
        if image is None:
            missing += 1
            continue
        records.append({"id": str(entry["questionId"]), "image": image,
                        "question": entry["question"],
                        "answers": [str(a) for a in entry.get("answers", [])]})
    if not records:
        raise _missing_dataset("docvqa", directory, f"none of the {missing} document images of "
                                                    f"{os.path.basename(path)} found")
    return records


def read_screen2words(directory: str, split: str) -> list[dict]:
    """Train: one record per (screen, summary). Validation (dev) / test: one per screen, target
    its first summary, "answers" all of them (for CIDEr). Screens without an image are skipped."""
    csv_path = os.path.join(directory, "screen_summaries.csv") if directory else ""
    name = {"train": "train", "validation": "dev", "test": "test"}[split]
    split_path = os.path.join(directory, "split", f"{name}_screens.txt") if directory else ""
    if not csv_path or not os.path.exists(csv_path):
        raise _missing_dataset("screen2words", directory, "screen_summaries.csv not found")
    if not os.path.exists(split_path):
        raise _missing_dataset("screen2words", directory, f"split/{name}_screens.txt not found")
    summaries: dict = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            summaries.setdefault(str(row["screenId"]).strip(), []).append(row["summary"].strip())
    with open(split_path) as f:
        screens = [s.strip() for s in f if s.strip()]
    records, missing = [], 0
    for screen in screens:
        image = _first_existing(os.path.join(directory, sub, f"{screen}{ext}")
                                for sub in ("combined", "images", os.path.join("rico", "combined"))
                                for ext in (".jpg", ".png"))
        if image is None or screen not in summaries:
            missing += 1
            continue
        refs = summaries[screen]
        if split == "train":
            records += [{"id": f"{screen}/{i}", "image": image, "answers": [s], "target": s}
                        for i, s in enumerate(refs)]
        else:
            records.append({"id": screen, "image": image, "answers": refs, "target": refs[0]})
    if not records:
        raise _missing_dataset("screen2words", directory, f"no screenshot of the {len(screens)} "
                                                          f"{name} screens found")
    return records


@functools.lru_cache(maxsize=8)
def _load_json(path: str, mtime: float):
    import json

    del mtime  # part of the cache key only
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- sources

def _columns(records: list[dict]) -> dict:
    """Records -> tf.data tensors: strings, answers as a ragged list of strings."""
    n = len(records)
    cols = {"id": [r["id"] for r in records], "image": [r["image"] for r in records],
            "targets": [r.get("target", (r.get("answers") or [""])[0]) for r in records]}
    if records and "question" in records[0]:
        cols["question"] = [r["question"] for r in records]
    out = {k: tf.constant(v, tf.string, shape=[n]) for k, v in cols.items()}
    out["answers"] = tf.ragged.constant([r.get("answers", []) for r in records],
                                        dtype=tf.string, ragged_rank=1)
    if records and "bbox" in records[0]:
        out["bbox"] = tf.constant([r["bbox"] for r in records], tf.int32, shape=[n, 4])
    return out


def _source(read: Callable[[str], list], splits=SPLITS) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        records = list(read(split))
        if shuffle_files:  # one "file": shuffle the examples before decoding any image
            random.Random(seed).shuffle(records)
        return tf.data.Dataset.from_tensor_slices(_columns(records))
    return seqio.FunctionDataSource(dataset_fn, splits=splits)


# ----------------------------------------------------------------------------- preprocessors

def _load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def tf_patchify(image, max_patches: int, patch_size: int = 16, channels: int = 3,
                normalize: bool = True):
    """patchify inside tf.data (a seqio preprocessor): tf.numpy_function with the static output
    shape [max_patches, 2 + p*p*channels].

    Args:
        image: a uint8 / float tensor HxW or HxWxC; it is converted to `channels` channels so
            that the shape is known.
        max_patches, patch_size, normalize: as coda_flax.frontends.patches.patchify.
    Returns:
        float32 tensor [max_patches, 2 + patch_size**2 * channels].
    """
    patching.check_sizes(max_patches, patch_size)

    def fn(img):
        return patching.patchify(img, max_patches, patch_size, normalize=normalize,
                                 channels=channels)

    out = tf.numpy_function(fn, [image], tf.float32, stateful=False)
    out.set_shape([max_patches, 2 + patch_size * patch_size * channels])
    return out


def _patchify_preprocessor(max_patches: int, patch_size: int = PATCH_SIZE,
                           header_key: Optional[str] = None,
                           font_path: Optional[Callable[[], str]] = None,
                           header_text_size: int = 36, with_ink: bool = False):
    """Map: "image" (path) [+ header text] -> "inputs" patches (and "ink")."""
    dim = 2 + patch_size * patch_size * NUM_CHANNELS

    def to_patches(path, header):
        image = _load_rgb(path.decode("utf-8"))
        ink = (patching.patch_ink(image, max_patches, patch_size) if with_ink
               else np.zeros(max_patches, bool))
        header = header.decode("utf-8")
        if header:
            image = patching.render_header(image, header, font_path(), text_size=header_text_size)
        out = patching.patchify(image, max_patches, patch_size, channels=NUM_CHANNELS)
        return out, ink

    @seqio.map_over_dataset
    def fn(ex):
        header = ex[header_key] if header_key else tf.constant("")
        inputs, ink = tf.numpy_function(to_patches, [ex["image"], header], (tf.float32, tf.bool),
                                        stateful=False)
        inputs.set_shape([max_patches, dim])
        ink.set_shape([max_patches])
        ex = dict(ex, inputs=inputs)
        if with_ink:
            ex["ink"] = ink
        return ex

    return fn


def _preprocessors(max_patches: int, patch_size: int, **kwargs) -> list:
    # Tokenize before "inputs" exists, so that seqio does not copy the patches to
    # "inputs_pretokenized"; the patches are cached, EOS is appended after trimming.
    return [seqio.preprocessors.tokenize,
            _patchify_preprocessor(max_patches, patch_size, **kwargs),
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]


# ----------------------------------------------------------------------------- registration

def feature_lengths(max_patches: Union[None, int, Mapping[str, int]] = None) -> dict:
    """{task: {"inputs": max_patches, "targets": bytes}} with register_vision_tasks' max_patches."""
    return {name: {"inputs": _max_patches(name, max_patches), "targets": TARGET_LENGTHS[name]}
            for name in VISION_TASKS}


def _max_patches(name: str, max_patches) -> int:
    if max_patches is None:
        return DEFAULT_MAX_PATCHES[name]
    if isinstance(max_patches, Mapping):
        return int(max_patches.get(name, DEFAULT_MAX_PATCHES[name]))
    return int(max_patches)


def register_vision_tasks(data_dir: Optional[str] = None, vision_data_dir: Optional[str] = None,
                          *, max_patches: Union[None, int, Mapping[str, int]] = None,
                          patch_size: int = PATCH_SIZE, vocabulary=None,
                          ocrvqa_dir: Optional[str] = None, docvqa_dir: Optional[str] = None,
                          screen2words_dir: Optional[str] = None, header_text_size: int = 36,
                          tasks=VISION_TASKS) -> list[str]:
    """Registers the vision tasks (module docstring); returns their names.

    data_dir: the offline cache with easy_vqa/, rendered_docs/ and fonts (default $CODA_DATA_DIR
    or ~/.cache/coda_flax/data). vision_data_dir / *_dir: the published datasets (module
    docstring). max_patches: one number for every task, a {task: number} dict, or None for
    DEFAULT_MAX_PATCHES; feed the matching feature_lengths(max_patches) to get_dataset.
    vocabulary: of the targets (default seqio.ByteVocabulary()). header_text_size: font size of
    the rendered question (Pix2Struct: 36 px, then the whole image is rescaled)."""
    unknown = set(tasks) - set(VISION_TASKS)
    if unknown:
        raise ValueError(f"unknown vision tasks {sorted(unknown)}; known: {VISION_TASKS}.")
    features = continuous_output_features(
        seqio.ByteVocabulary() if vocabulary is None else vocabulary)
    fonts = functools.lru_cache(maxsize=1)(
        lambda: vision_data.find_fonts(data_dir, download=False)["sans"])
    easy_root = vision_data.easy_vqa_dir(data_dir)
    docs_root = vision_data.rendered_docs_dir(data_dir)
    words_root = vision_data.rendered_words_dir(data_dir)
    provenance.bind("coda_rendered_docs", [docs_root])     # their datasets' hashes for runs
    provenance.bind("coda_rendered_words", [words_root])
    dirs = {"ocrvqa": ocrvqa_dir, "docvqa": docvqa_dir, "screen2words": screen2words_dir}

    def local(name, read):
        def read_split(split):
            return read(dataset_dir(name, dirs[name], vision_data_dir), split)
        return read_split

    def vqa(read):  # the header needs the font: fail early, in Python, when it is missing
        def read_split(split):
            fonts()
            return read(split)
        return read_split

    specs = {
        "coda_easy_vqa": dict(
            source=_source(vqa(functools.partial(_easy_vqa_records, easy_root))),
            header_key="question", metric_fns=[metrics.exact_match]),
        "coda_rendered_docs": dict(
            source=_source(functools.partial(_rendered_docs_records, docs_root)),
            with_ink=True, metric_fns=[metrics.exact_match, metrics.anls]),
        "coda_rendered_words": dict(
            source=_source(functools.partial(_rendered_docs_records, words_root)),
            with_ink=True, metric_fns=[metrics.exact_match, metrics.anls]),
        "coda_ocrvqa": dict(
            source=_source(vqa(local("ocrvqa", read_ocrvqa)), SPLITS_WITH_TEST),
            header_key="question", metric_fns=[metrics.exact_match, metrics.anls]),
        "coda_docvqa": dict(
            source=_source(vqa(local("docvqa", read_docvqa)), SPLITS_WITH_TEST),
            header_key="question", metric_fns=[metrics.anls, metrics.exact_match]),
        "coda_screen2words": dict(
            source=_source(local("screen2words", read_screen2words), SPLITS_WITH_TEST),
            metric_fns=[metrics.cider]),
    }
    for name in tasks:
        spec = dict(specs[name])
        n = _max_patches(name, max_patches)
        preprocessors = _preprocessors(
            n, patch_size, header_key=spec.pop("header_key", None), font_path=fonts,
            header_text_size=header_text_size, with_ink=spec.pop("with_ink", False))
        add_task(name, source=spec.pop("source"), output_features=features,
                 preprocessors=preprocessors, postprocess_fn=metrics.answers_postprocessor,
                 **spec)
    return list(tasks)


def register_page_task(name: str, root: str, *, max_patches: int,
                       patch_size: int = PATCH_SIZE, vocabulary=None) -> str:
    """Registers pages in the rendered-documents layout under `root` (e.g. a dataset of
    coda_flax.datasets.ink_pages) as the task `name`, as coda_rendered_words is: image ->
    its text, with "ink" (the patches holding ink); exact match and ANLS. Returns name."""
    features = continuous_output_features(
        seqio.ByteVocabulary() if vocabulary is None else vocabulary)
    provenance.bind(name, [root])
    add_task(name, source=_source(functools.partial(_rendered_docs_records, root)),
             output_features=features,
             preprocessors=_preprocessors(max_patches, patch_size, with_ink=True),
             postprocess_fn=metrics.answers_postprocessor,
             metric_fns=[metrics.exact_match, metrics.anls])
    return name


def _easy_vqa_records(root: str, split: str) -> list[dict]:
    return [dict(r, answers=[r["answer"]]) for r in vision_data.read_easy_vqa(root, split)]


def _rendered_docs_records(root: str, split: str) -> list[dict]:
    return [{"id": r["id"], "image": r["image"], "answers": [r["text"]], "bbox": r["bbox"]}
            for r in vision_data.read_rendered_docs(root, split)]


__all__ = ["VISION_TASKS", "VISION_FEATURE_LENGTHS", "DEFAULT_MAX_PATCHES", "TARGET_LENGTHS",
           "register_vision_tasks", "register_page_task", "feature_lengths", "dataset_dir",
           "read_ocrvqa",
           "read_docvqa", "read_screen2words", "MissingVisionDataError", "OCRVQA_LAYOUT",
           "DOCVQA_LAYOUT", "SCREEN2WORDS_LAYOUT"]
