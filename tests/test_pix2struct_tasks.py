"""The coda_pix2struct_* tasks (issue 21) on TFRecords in the layout Pix2Struct's preprocessing
writes: patches of the stored PNG (question header already rendered), the first "parse" as the
target, all of them as answers; the metrics on hand-computed predictions (ANLS by its formula,
CIDEr against pycocoevalcap)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from coda_flax.datasets.vision import MissingVisionDataError
from coda_flax.frontends.patches import patchify
from coda_flax.tasks import pix2struct as p2s
from coda_flax.tasks._tf import tf

MAX_PATCHES = 24


def _png(rng, height, width):
    from PIL import Image

    buf = io.BytesIO()
    pixels = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), pixels


def _example(image: bytes, id_: str, parses):
    ex = tf.train.Example()
    ex.features.feature["image"].bytes_list.value.append(image)
    ex.features.feature["id"].bytes_list.value.append(id_.encode())
    for p in parses:
        ex.features.feature["parse"].bytes_list.value.append(p.encode())
    return ex.SerializeToString()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """ocrvqa / docvqa / screen2words processed/ dirs, sharded as beam's WriteToTFRecord names."""
    root = str(tmp_path_factory.mktemp("pix2struct_data"))
    rng = np.random.RandomState(0)
    pixels = {}
    for dataset, val in (("ocrvqa", "val"), ("docvqa", "val"), ("screen2words", "dev")):
        d = os.path.join(root, dataset, "processed")
        os.makedirs(d)
        for split in ("train", val):
            for shard in range(2):
                path = os.path.join(d, f"{split}.tfr-0000{shard}-of-00002")
                with tf.io.TFRecordWriter(path) as w:
                    png, px = _png(rng, 40 + 8 * shard, 56)
                    key = f"{dataset}-{split}-{shard}"
                    pixels[key] = px
                    w.write(_example(png, key, [f"answer {shard}", f"Answer {shard}!"]))
    return root, pixels


def test_tasks_read_pix2struct_tfrecords(data):
    root, pixels = data
    names = p2s.register_pix2struct_tasks(root, max_patches=MAX_PATCHES)
    import seqio
    for name, split in (("coda_pix2struct_ocrvqa", "validation"),
                        ("coda_pix2struct_screen2words", "validation"),
                        ("coda_pix2struct_docvqa", "train")):
        assert name in names
        task = seqio.get_mixture_or_task(name)
        exs = list(task.get_dataset({"inputs": MAX_PATCHES, "targets": 32}, split=split,
                                    shuffle=False).as_numpy_iterator())
        assert len(exs) == 2
        for ex in exs:
            key = ex["id"].decode()
            shard = int(key[-1])
            assert key.split("-")[1] == {"validation": "dev" if "screen" in name else "val",
                                          "train": "train"}[split]
            np.testing.assert_allclose(ex["inputs"], patchify(pixels[key], MAX_PATCHES, 16),
                                       atol=1e-5)
            assert ex["inputs"].shape == (MAX_PATCHES, 2 + 16 * 16 * 3)
            assert ex["targets_pretokenized"].decode() == f"answer {shard}"
            assert list(ex["targets"][:-1]) == [x + 3 for x in f"answer {shard}".encode()]
            assert ex["targets"][-1] == 1                               # EOS
            assert [a.decode() for a in ex["answers"]] == [f"answer {shard}",
                                                           f"Answer {shard}!"]


def test_task_metrics_against_hand_computed_values(data):
    import seqio
    root, _ = data
    p2s.register_pix2struct_tasks(root, max_patches=MAX_PATCHES)
    answers = [["answer 0", "Answer 0!"], ["hello world"]]
    preds = ["ANSWER 0", "hello word"]
    fns = {f.__name__: f for f in seqio.get_mixture_or_task("coda_pix2struct_docvqa").metric_fns}
    # ANLS: 1 - NL per question (NL = edit distance / longer length): 1 and 1 - 1/11
    assert fns["anls"](answers, preds)["anls"] == pytest.approx(100 * (1 + (1 - 1 / 11)) / 2)
    assert fns["exact_match"](answers, preds)["exact_match"] == pytest.approx(50.0)
    pycoco = pytest.importorskip("pycocoevalcap.cider.cider")
    refs = [["a red book cover with a title", "the cover of a red book"],
            ["settings screen of an app", "screen showing the app settings"],
            ["login page with a button", "a page to log in"]]
    hyps = ["a red book cover", "app settings screen", "a login page"]
    cider_fn = seqio.get_mixture_or_task("coda_pix2struct_screen2words").metric_fns[0]
    want, _ = pycoco.Cider().compute_score({i: r for i, r in enumerate(refs)},
                                           {i: [h] for i, h in enumerate(hyps)})
    assert cider_fn(refs, hyps)["cider"] == pytest.approx(100 * want, rel=1e-6)


def test_missing_tfrecords_name_the_pattern_and_the_script(tmp_path, monkeypatch):
    monkeypatch.delenv(p2s.DATA_DIR_ENV_VAR, raising=False)
    monkeypatch.delenv("PIX2STRUCT_DIR", raising=False)
    with pytest.raises(MissingVisionDataError, match=r"screen2words/processed/dev.tfr\*.*"
                                                     r"convert_screen2words"):
        p2s.split_files("coda_pix2struct_screen2words", "validation", str(tmp_path))
    with pytest.raises(MissingVisionDataError, match="no data_dir given"):
        p2s.split_files("coda_pix2struct_ocrvqa", "train")
    monkeypatch.setenv("PIX2STRUCT_DIR", str(tmp_path))
    assert p2s.data_dir_of() == os.path.join(str(tmp_path), "data")
    with pytest.raises(ValueError, match="unknown Pix2Struct tasks"):
        p2s.register_pix2struct_tasks(str(tmp_path), tasks=("coda_pix2struct_chartqa",))
