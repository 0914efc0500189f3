"""Vision data and seqio tasks (coda_flax.datasets.vision / tasks.vision) on tiny data the tests
write themselves: a fake easy-VQA wheel, rendered pages from a word list, and OCR-VQA / DocVQA /
Screen2Words directories in their published layouts. Nothing here downloads."""

import base64
import csv
import hashlib
import json
import os
import random
import zipfile

import numpy as np
import pytest
import seqio
from PIL import Image

from corpus_helpers import WORDS
from coda_flax.frontends import patches as P
from coda_flax.datasets import vision as vision_data
from coda_flax.tasks import vision
from coda_flax.tasks.features import ContinuousEncDecFeatureConverter
from coda_flax.datasets.vision import MissingVisionDataError

QUIET = dict(log=lambda s: None)
MAX_PATCHES = 48
DIM = 2 + 16 * 16 * 3


def _lines(n=60, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(n)]


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _shape_image(seed, size=64):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    y, x = rng.integers(0, size - 20, 2)
    img[y:y + 20, x:x + 20] = rng.integers(0, 200, 3)
    return img


@pytest.fixture(scope="module")
def fonts():
    # No skip: find_fonts falls back to the DejaVu copy that matplotlib (a test dependency)
    # bundles, so a missing font is a broken environment or a broken find_fonts.
    return vision_data.find_fonts(download=False, **QUIET)


# ----------------------------------------------------------------------------- easy-VQA wheel

def _fake_easy_vqa_wheel(path, tamper=False):
    questions = {"train": [["what color is the shape?", "red", 0], ["is there a circle?", "no", 1],
                           ["what shape is present?", "rectangle", 1]],
                 "test": [["is there a red shape?", "yes", 0]]}
    files = {"easy_vqa/__init__.py": b"", "easy_vqa/data/answers.txt": b"red\nno\nyes\n",
             "easy_vqa/data/README.md": b"# data/\n", "easy_vqa/data/.DS_Store": b"junk",
             "easy_vqa-1.0.dist-info/LICENSE": b"MIT License\n"}
    for split, qs in questions.items():
        files[f"easy_vqa/data/{split}/questions.json"] = json.dumps(qs).encode()
        for image_id in {q[2] for q in qs}:
            buf = os.path.join(os.path.dirname(path), f"tmp_{split}_{image_id}.png")
            Image.fromarray(_shape_image(image_id)).save(buf)
            with open(buf, "rb") as f:
                files[f"easy_vqa/data/{split}/images/{image_id}.png"] = f.read()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("easy_vqa-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data + (b"x" if tamper and name.endswith("0.png") else b""))
        zf.writestr("easy_vqa-1.0.dist-info/RECORD", "\n".join(record))
    return questions


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, fonts):
    """A data cache with easy-VQA (from a fake wheel, through the real extraction) and a few
    rendered pages."""
    root = tmp_path_factory.mktemp("coda_data")
    wheel = root / "fake.whl"
    _fake_easy_vqa_wheel(str(wheel))
    vision_data.extract_easy_vqa(str(wheel), vision_data.easy_vqa_dir(str(root)), **QUIET)
    vision_data.prepare_rendered_docs(str(root), num_train=6, num_validation=3, lines=_lines(),
                                      download=False, **QUIET)
    return str(root)


def test_easy_vqa_extraction_checks_record_and_writes_manifest(data_dir):
    root = vision_data.easy_vqa_dir(data_dir)
    manifest = vision_data.verify_manifest(root)
    assert manifest is not None
    assert manifest["counts"] == {"train_questions": 3, "train_images": 2, "test_questions": 1,
                                  "test_images": 1}
    assert "LICENSE" in manifest["files"] and not any(".DS_Store" in f for f in manifest["files"])
    records = vision_data.read_easy_vqa(root, "validation")       # = the package's test split
    assert records == [{"id": "validation/0", "question": "is there a red shape?",
                        "answer": "yes", "image": os.path.join(root, "test", "images", "0.png")}]


def test_easy_vqa_tampered_wheel_and_modified_files_are_caught(tmp_path):
    bad = tmp_path / "bad.whl"
    _fake_easy_vqa_wheel(str(bad), tamper=True)
    with pytest.raises(RuntimeError, match="RECORD"):
        vision_data.extract_easy_vqa(str(bad), str(tmp_path / "out"), **QUIET)
    good = tmp_path / "good.whl"
    _fake_easy_vqa_wheel(str(good))
    out = tmp_path / "ok"
    vision_data.extract_easy_vqa(str(good), str(out), **QUIET)
    assert vision_data.verify_manifest(str(out)) is not None
    with open(out / "train" / "questions.json", "a") as f:
        f.write(" ")
    assert vision_data.verify_manifest(str(out)) is None


def test_prepare_easy_vqa_downloads_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(requirement, wheel_name, sha256, cache_dir, **kwargs):
        calls.append((requirement, sha256))
        path = os.path.join(cache_dir, wheel_name)
        os.makedirs(cache_dir, exist_ok=True)
        _fake_easy_vqa_wheel(path)
        return path

    monkeypatch.setattr(vision_data, "pip_download_wheel", fake_download)
    first = vision_data.prepare_easy_vqa(str(tmp_path), **QUIET)
    logs = []
    second = vision_data.prepare_easy_vqa(str(tmp_path), log=logs.append)
    assert calls == [("easy-vqa==1.0", vision_data.EASY_VQA_SHA256)]
    assert first["files"] == second["files"] and "already prepared" in logs[0]


def test_missing_easy_vqa_names_the_fix(tmp_path):
    with pytest.raises(MissingVisionDataError, match="prepare_vision_data.py"):
        vision_data.read_easy_vqa(str(tmp_path / "nothing"), "train")


# ----------------------------------------------------------------------------- fonts

def test_missing_fonts_error_names_the_commands(tmp_path, monkeypatch):
    monkeypatch.setattr(vision_data, "SYSTEM_FONT_DIRS", (str(tmp_path / "none"),))
    monkeypatch.setattr(vision_data, "_matplotlib_font_dir", lambda: None)
    with pytest.raises(MissingVisionDataError, match="apt-get download fonts-dejavu-core"):
        vision_data.find_fonts(str(tmp_path), download=False)


def test_fonts_extracted_in_the_cache_are_found(tmp_path, monkeypatch, fonts):
    monkeypatch.setattr(vision_data, "SYSTEM_FONT_DIRS", ())
    target = vision_data._extracted_font_dir(vision_data._font_cache_dir(str(tmp_path)))
    os.makedirs(target)
    for path in fonts.values():
        with open(path, "rb") as src, open(os.path.join(target, os.path.basename(path)), "wb") as d:
            d.write(src.read())
    assert vision_data.find_fonts(str(tmp_path))["sans"] == os.path.join(target, "DejaVuSans.ttf")


# ----------------------------------------------------------------------------- rendered pages

def test_rendered_docs_records_images_and_split(data_dir):
    root = vision_data.rendered_docs_dir(data_dir)
    train = vision_data.read_rendered_docs(root, "train")
    val = vision_data.read_rendered_docs(root, "validation")
    assert len(train) == 6 and len(val) == 3
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    for r in train + val:
        assert 8 <= len(r["text"]) <= 24 and all(w in WORDS for w in r["text"].split())
        page = np.asarray(Image.open(r["image"]))
        assert page.shape == (r["height"], r["width"])
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
        dark = np.argwhere(page < 128)
        assert len(dark) > 0                                       # there is text ...
        assert dark[:, 0].min() >= y0 and dark[:, 0].max() < y1    # ... only inside its box
        assert dark[:, 1].min() >= x0 and dark[:, 1].max() < x1
        assert (page == 255).mean() > 0.7                          # a mostly white page


def test_rendered_docs_are_deterministic_and_reused(tmp_path, data_dir):
    meta = vision_data.prepare_rendered_docs(str(tmp_path), num_train=6, num_validation=3,
                                             lines=_lines(), download=False, **QUIET)
    ref = vision_data.rendered_docs_dir(data_dir)
    out = vision_data.rendered_docs_dir(str(tmp_path))
    for split in ("train", "validation"):
        with open(os.path.join(ref, f"{split}.jsonl")) as a, \
                open(os.path.join(out, f"{split}.jsonl")) as b:
            assert a.read() == b.read()
    first = os.path.join(out, "images", "train", "train_00000.png")
    with open(first, "rb") as a, open(first.replace(out, ref), "rb") as b:
        assert a.read() == b.read()
    mtime = os.path.getmtime(first)
    logs = []
    again = vision_data.prepare_rendered_docs(str(tmp_path), num_train=6, num_validation=3,
                                              lines=_lines(), download=False, log=logs.append)
    assert again == meta and "already prepared" in logs[0] and os.path.getmtime(first) == mtime
    other = vision_data.build_rendered_docs(str(tmp_path / "seed1"), _lines(),
                                            vision_data.find_fonts(download=False, **QUIET),
                                            num_train=6, num_validation=3, seed=1, **QUIET)
    assert other["jsonl_sha256"] != meta["jsonl_sha256"]


def test_rendered_words_pages_show_one_listed_word_and_are_reused(tmp_path, fonts):
    words = ("thou", "king", "storm")
    meta = vision_data.prepare_rendered_words(str(tmp_path), words=words, num_train=6,
                                              num_validation=3, download=False, **QUIET)
    assert meta["counts"] == {"train": 6, "validation": 3}
    root = vision_data.rendered_words_dir(str(tmp_path))
    for r in vision_data.read_rendered_docs(root, "train"):
        assert r["text"] in words
        page = np.asarray(Image.open(r["image"]))
        x0, y0, x1, y1 = r["bbox"]
        dark = np.argwhere(page < 128)
        assert len(dark) and dark[:, 0].min() >= y0 and dark[:, 1].max() < x1
        assert (page == 255).mean() > 0.7
    logs = []
    again = vision_data.prepare_rendered_words(str(tmp_path), words=words, num_train=6,
                                               num_validation=3, download=False,
                                               log=logs.append)
    assert again == meta and "already prepared" in logs[0]


def test_too_few_snippets_is_a_clear_error(tmp_path, fonts):
    with pytest.raises(ValueError, match="distinct snippets"):
        vision_data.build_rendered_docs(str(tmp_path), ["one two"], fonts, num_train=5,
                                        num_validation=1, **QUIET)


# ----------------------------------------------------------------------------- published layouts

@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_data")
    # OCR-VQA: dataset.json + images/<id><ext of imageURL>; split 1 train, 2 val, 3 test
    ocr = root / "ocrvqa"
    data = {"111": {"imageURL": "http://x/111.jpg", "questions": ["Who wrote this book?",
                                                                  "Is this a comedy book?"],
                    "answers": ["Jane Austen", "No"], "title": "Emma", "genre": "Fiction",
                    "split": 1},
            "222": {"imageURL": "http://x/222.jpg", "questions": ["What is the title?"],
                    "answers": ["Emma"], "split": 2},
            "333": {"imageURL": "http://x/333.jpg", "questions": ["dead link?"],
                    "answers": ["yes"], "split": 1}}                          # no image: skipped
    os.makedirs(ocr / "images")
    (ocr / "dataset.json").write_text(json.dumps(data))
    _save(str(ocr / "images" / "111.jpg"), _shape_image(1, 90))
    _save(str(ocr / "images" / "222.jpg"), _shape_image(2, 80))
    # DocVQA: <split>/<split>_v1.0.json, images relative to it
    doc = root / "docvqa"
    for split, answers in (("train", ["$12.50", "12.50"]), ("val", ["Tuesday"]), ("test", None)):
        entry = {"questionId": {"train": 7, "val": 8, "test": 9}[split],
                 "question": "What is the total?", "image": f"documents/{split}_page.png",
                 "docId": 1}
        if answers is not None:
            entry["answers"] = answers
        os.makedirs(doc / split / "documents")
        (doc / split / f"{split}_v1.0.json").write_text(json.dumps(
            {"dataset_name": "docvqa", "dataset_split": split, "data": [entry]}))
        _save(str(doc / split / "documents" / f"{split}_page.png"),
              np.full((220, 170), 255, np.uint8))
    # Screen2Words: screen_summaries.csv + split/*.txt + RICO combined/<id>.jpg
    s2w = root / "screen2words"
    os.makedirs(s2w / "split")
    with open(s2w / "screen_summaries.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["screenId", "summary"])
        for sid in ("10", "20"):
            for i in range(3):
                w.writerow([sid, f"summary {i} of screen {sid}"])
    (s2w / "split" / "train_screens.txt").write_text("10\n")
    (s2w / "split" / "dev_screens.txt").write_text("20\n")
    (s2w / "split" / "test_screens.txt").write_text("99\n")                 # no image
    for sid in ("10", "20"):
        _save(str(s2w / "combined" / f"{sid}.jpg"), _shape_image(int(sid), 100)[:, :60])
    return str(root)


def test_readers_follow_the_published_layouts(published):
    ocr = vision.read_ocrvqa(os.path.join(published, "ocrvqa"), "train")
    assert [(r["id"], r["question"], r["answers"]) for r in ocr] == [
        ("111/0", "Who wrote this book?", ["Jane Austen"]),
        ("111/1", "Is this a comedy book?", ["No"])]
    doc = vision.read_docvqa(os.path.join(published, "docvqa"), "validation")
    assert [(r["id"], r["answers"]) for r in doc] == [("8", ["Tuesday"])]
    assert vision.read_docvqa(os.path.join(published, "docvqa"), "test")[0]["answers"] == []
    s2w = os.path.join(published, "screen2words")
    train = vision.read_screen2words(s2w, "train")
    assert [r["target"] for r in train] == [f"summary {i} of screen 10" for i in range(3)]
    dev = vision.read_screen2words(s2w, "validation")
    assert len(dev) == 1 and dev[0]["answers"] == [f"summary {i} of screen 20" for i in range(3)]


@pytest.mark.parametrize("reader, name, what", [
    (vision.read_ocrvqa, "ocrvqa", "dataset.json"),
    (vision.read_docvqa, "docvqa", "train_v1.0.json"),
    (vision.read_screen2words, "screen2words", "screen_summaries.csv"),
])
def test_missing_published_data_names_directory_layout_and_env_var(tmp_path, reader, name, what):
    missing = str(tmp_path / name)
    with pytest.raises(MissingVisionDataError) as info:
        reader(missing, "train")
    message = str(info.value)
    for part in (missing, what, f"CODA_{name.upper()}_DIR", "CODA_VISION_DATA_DIR",
                 f"{name}_dir="):
        assert part in message, part


def test_screen2words_without_images_is_an_error(published):
    with pytest.raises(MissingVisionDataError, match="no screenshot"):
        vision.read_screen2words(os.path.join(published, "screen2words"), "test")


def test_dataset_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("CODA_OCRVQA_DIR", raising=False)
    monkeypatch.delenv("CODA_VISION_DATA_DIR", raising=False)
    assert vision.dataset_dir("ocrvqa", "/explicit") == "/explicit"
    assert vision.dataset_dir("ocrvqa") == ""
    os.makedirs(tmp_path / "OCR-VQA")
    monkeypatch.setenv("CODA_VISION_DATA_DIR", str(tmp_path))
    assert vision.dataset_dir("ocrvqa") == str(tmp_path / "OCR-VQA")
    monkeypatch.setenv("CODA_OCRVQA_DIR", "/env")
    assert vision.dataset_dir("ocrvqa") == "/env"


# ----------------------------------------------------------------------------- seqio tasks

@pytest.fixture(scope="module")
def registered(data_dir, published):
    names = vision.register_vision_tasks(data_dir, published, max_patches=MAX_PATCHES)
    yield names
    for name in names:
        seqio.TaskRegistry.remove(name)


def _examples(name, split="train"):
    task = seqio.get_mixture_or_task(name)
    lengths = vision.feature_lengths(MAX_PATCHES)[name]
    return list(task.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())


def _decode(ids):
    return seqio.ByteVocabulary().decode(ids.tolist())


def _check_common(ex, target):
    assert ex["inputs"].shape == (MAX_PATCHES, DIM) and ex["inputs"].dtype == np.float32
    rows, cols = P.patch_grid(ex["inputs"])
    assert np.all(ex["inputs"][rows * cols:] == 0) and np.all(ex["inputs"][:rows * cols, 0] > 0)
    assert ex["targets"][-1] == 1 and _decode(ex["targets"][:-1]) == target
    assert ex["targets_pretokenized"].decode() == target


def test_registration_names_and_feature_lengths(registered):
    assert registered == list(vision.VISION_TASKS)
    assert vision.VISION_FEATURE_LENGTHS["coda_docvqa"] == {"inputs": 4096, "targets": 128}
    assert vision.VISION_FEATURE_LENGTHS["coda_easy_vqa"] == {"inputs": 256, "targets": 16}
    assert vision.feature_lengths({"coda_easy_vqa": 64})["coda_easy_vqa"]["inputs"] == 64
    with pytest.raises(ValueError, match="unknown vision tasks"):
        vision.register_vision_tasks(tasks=("coda_nope",))


def test_easy_vqa_task_renders_the_question_as_a_header(registered, data_dir, fonts):
    exs = _examples("coda_easy_vqa")
    assert [e["targets_pretokenized"].decode() for e in exs] == ["red", "no", "rectangle"]
    ex = exs[0]
    _check_common(ex, "red")
    assert ex["question"].decode() == "what color is the shape?"
    assert [a.decode() for a in ex["answers"]] == ["red"]
    image = np.asarray(Image.open(ex["image"].decode()).convert("RGB"))
    want = P.patchify(P.render_header(image, "what color is the shape?", fonts["sans"]),
                      MAX_PATCHES, channels=3)
    np.testing.assert_allclose(ex["inputs"], want, atol=1e-6)
    no_header = P.patchify(image, MAX_PATCHES, channels=3)
    assert not np.allclose(ex["inputs"], no_header, atol=1e-2)


def test_rendered_docs_task_and_feature_converter(registered, data_dir):
    exs = _examples("coda_rendered_docs", "validation")
    records = vision_data.read_rendered_docs(vision_data.rendered_docs_dir(data_dir),
                                             "validation")
    assert len(exs) == 3
    for ex, r in zip(exs, records):
        _check_common(ex, r["text"])
        page = np.asarray(Image.open(r["image"]).convert("RGB"))
        np.testing.assert_allclose(ex["inputs"], P.patchify(page, MAX_PATCHES), atol=1e-6)
        np.testing.assert_array_equal(ex["ink"], P.patch_ink(page, MAX_PATCHES))
        assert 0 < ex["ink"].sum() < (ex["inputs"][:, 0] > 0).sum()
        assert ex["bbox"].tolist() == r["bbox"]
    ds = seqio.get_dataset("coda_rendered_docs", {"inputs": MAX_PATCHES, "targets": 32},
                           dataset_split="validation", shuffle=False, batch_size=2,
                           feature_converter=ContinuousEncDecFeatureConverter(pack=False))
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (2, MAX_PATCHES, DIM)
    assert batch["decoder_target_tokens"].shape == (2, 32)
    assert _decode(batch["decoder_target_tokens"][0][:len(records[0]["text"])]) == \
        records[0]["text"]


def test_ocrvqa_docvqa_screen2words_tasks(registered, fonts):
    ocr = _examples("coda_ocrvqa")
    assert len(ocr) == 2
    _check_common(ocr[0], "Jane Austen")
    doc = _examples("coda_docvqa")
    _check_common(doc[0], "$12.50")
    assert [a.decode() for a in doc[0]["answers"]] == ["$12.50", "12.50"]
    image = np.asarray(Image.open(doc[0]["image"].decode()).convert("RGB"))
    want = P.patchify(P.render_header(image, "What is the total?", fonts["sans"]), MAX_PATCHES)
    np.testing.assert_allclose(doc[0]["inputs"], want, atol=1e-6)
    test = _examples("coda_docvqa", "test")
    assert test[0]["answers"].shape == (0,) and test[0]["targets"].tolist() == [1]
    s2w = _examples("coda_screen2words", "validation")
    _check_common(s2w[0], "summary 0 of screen 20")
    assert len(s2w[0]["answers"]) == 3 and "question" not in s2w[0]


def test_task_metrics_on_postprocessed_examples(registered):
    task = seqio.get_mixture_or_task("coda_docvqa")
    ex = _examples("coda_docvqa")[0]
    target = task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
    assert target == ["$12.50", "12.50"]
    scores = {}
    for fn in task.metric_fns:
        scores.update(fn([target], ["12.50"]))
    assert scores == {"anls": 100.0, "exact_match": 100.0}


def test_missing_local_dataset_error_when_asking_for_data(tmp_path, data_dir, published,
                                                         registered, monkeypatch):
    for var in ("CODA_VISION_DATA_DIR", "CODA_OCRVQA_DIR"):
        monkeypatch.delenv(var, raising=False)
    vision.register_vision_tasks(data_dir, str(tmp_path), tasks=("coda_ocrvqa",),
                                 max_patches=MAX_PATCHES)   # registering reads nothing
    try:
        with pytest.raises(MissingVisionDataError, match="dataset.json"):
            seqio.get_mixture_or_task("coda_ocrvqa").get_dataset(
                {"inputs": MAX_PATCHES, "targets": 128}, split="train")
    finally:  # back to the module's registration
        vision.register_vision_tasks(data_dir, published, tasks=("coda_ocrvqa",),
                                     max_patches=MAX_PATCHES)


def test_patch_size_follows_registration(data_dir, registered):
    vision.register_vision_tasks(data_dir, tasks=("coda_rendered_docs",), max_patches=32,
                                 patch_size=8)
    try:
        ex = next(seqio.get_mixture_or_task("coda_rendered_docs").get_dataset(
            {"inputs": 32, "targets": 32}, split="train", shuffle=False).as_numpy_iterator())
        assert ex["inputs"].shape == (32, 2 + 8 * 8 * 3) and ex["ink"].shape == (32,)
    finally:
        vision.register_vision_tasks(data_dir, tasks=("coda_rendered_docs",),
                                     max_patches=MAX_PATCHES)
