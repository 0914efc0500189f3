"""What a table's unfinished experiments need and do not find (TFDS data, the vocabulary,
initial checkpoints, the offline corpus, Pix2Struct's TFRecords, gin files), each with how to
provide it: checked before `coda reproduce` runs anything.
"""

from __future__ import annotations

import os
from typing import Sequence

from coda_flax.experiments.gin_commands import literal, missing_gin_files
from coda_flax.experiments.paper_tables import ReproduceError, table_title

# Files of the offline tasks (coda_flax/tasks/offline.py) under shakespeare.corpus_dir(DATA_DIR).
OFFLINE_TASK_FILES = {"coda_shakespeare_span_corruption": "scenes.jsonl",
                      "coda_shakespeare_play": "play_passages.jsonl",
                      "coda_shakespeare_speaker": "speaker.jsonl"}


# Table 6's CoDA pretraining (Pix2Struct's screenshot parsing, configs/table8.py).
PIX2STRUCT_PRETRAINING = "coda_pix2struct_pretraining"
PIX2STRUCT_VOCAB = ("Pix2Struct's SentencePiece model (gs://pix2struct-data/sentencepiece.model, "
                    "as in google-research/pix2struct's gin files)")


class MissingPrerequisitesError(ReproduceError):
    """Data, vocabulary or checkpoints the experiments need are not there."""


def _default_tfds_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                           "tensorflow_datasets")


def _tfds_prepared_dir(data_dir: str, tfds_name: str) -> str:
    """TFDS's layout: <data_dir>/<name>[/<config>]/<version>/dataset_info.json."""
    name, _, version = tfds_name.partition(":")
    parts = [data_dir, *name.split("/")]
    return os.path.join(*parts, version) if version else os.path.join(*parts)


def _tfds_is_prepared(data_dir: str, tfds_name: str) -> bool:
    path = _tfds_prepared_dir(data_dir, tfds_name)
    if ":" in tfds_name:
        return os.path.exists(os.path.join(path, "dataset_info.json"))
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, v, "dataset_info.json")) for v in os.listdir(path))


_TFDS_NOTES = {
    "xsum": " XSum also needs its archive downloaded by hand first (tfds build xsum "
            "--manual_dir DIR; see the TFDS xsum page).",
    "c4": " C4 is ~800 GB, built with Apache Beam; copying a prepared c4/en/<version> folder is "
          "easier. To skip CoDA pretraining (finetune straight from the dense checkpoint, "
          "Figure 3's 0 steps) pass --pretrain-steps 0.",
}


def check_prerequisites(spec, experiments: Sequence) -> list[str]:
    """What the unfinished stages need and do not find, each with how to provide it ([] = ok)."""
    pending = [(e, s) for e in experiments if not e.finished() for s in e.stages if not s.done()]
    problems: list[str] = []
    seen: set = set()

    def add(key, text):
        if key not in seen:
            seen.add(key)
            problems.append(text)

    for _, s in pending:
        for f in missing_gin_files(s.gin_files):
            add(("gin", f), f"gin file {f} does not exist.")

    tfds_names = offline = None
    for e, s in pending:
        b = s.bindings
        task = literal(b.get("MIXTURE_OR_TASK_NAME"))
        if task is None:
            continue
        if tfds_names is None:
            from coda_flax.tasks.paper import TFDS_NAMES as tfds_names  # noqa: N811
            from coda_flax.datasets import shakespeare as offline
        vocab = literal(b.get("VOCAB_PATH"))
        if task in tfds_names:
            data_dir = literal(b.get("TFDS_DATA_DIR")) or _default_tfds_dir()
            name = tfds_names[task]
            if "://" not in data_dir and not _tfds_is_prepared(data_dir, name):
                base = name.split(":")[0]
                add(("tfds", name, data_dir),
                    f"TFDS dataset '{name}' (task {task}) is not prepared in {data_dir} "
                    f"(looked for {_tfds_prepared_dir(data_dir, name)}/dataset_info.json; "
                    f"nothing is downloaded). On a machine with internet run `tfds build {base} "
                    f"--data_dir DIR`, copy DIR here and pass --gin.TFDS_DATA_DIR=\"'DIR'\" (or "
                    f"set $TFDS_DATA_DIR)." + _TFDS_NOTES.get(base.split("/")[0], ""))
            vocab = vocab or os.environ.get("CODA_VOCAB")
            if not vocab:
                add(("vocab", None),
                    "no vocabulary: the paper's tasks use T5's SentencePiece model "
                    "(gs://t5-data/vocabs/cc_all.32000/sentencepiece.model, also spiece.model in "
                    "the Hugging Face google/t5-v1_1-* repositories). Copy it here and pass "
                    "--gin.VOCAB_PATH=\"'/path/spiece.model'\" (or set $CODA_VOCAB).")
            elif "://" not in str(vocab) and not os.path.exists(vocab):
                add(("vocab", vocab), f"vocabulary {vocab} does not exist (VOCAB_PATH / "
                                      "$CODA_VOCAB): copy T5's SentencePiece model there.")
        elif task == PIX2STRUCT_PRETRAINING:
            add(("task", task), f"task {task} (Table 6's CoDA pretraining: Pix2Struct's "
                                f"screenshot parsing of web pages) is not built in coda_flax: pass "
                                f"--pretrain-steps 0 to finetune CoDA straight from the converted "
                                f"Pix2Struct checkpoint.")
        elif task.startswith("coda_pix2struct_"):
            _pix2struct_task(add, task, s, b)
        elif task in OFFLINE_TASK_FILES:
            root = offline.corpus_dir(literal(b.get("DATA_DIR")))
            path = os.path.join(root, OFFLINE_TASK_FILES[task])
            if not os.path.exists(path):
                add(("offline", path),
                    f"offline corpus file {path} (task {task}) does not exist: run `python "
                    f"scripts/prepare_data.py --data-dir DIR` and pass --gin.DATA_DIR=\"'DIR'\".")
            if vocab is None and offline.find_vocab(root) is None:
                add(("vocab", root), f"no vocabulary for {task}: none prepared for the corpus "
                                     f"{root}; run scripts/prepare_data.py or pass "
                                     "--gin.VOCAB_PATH.")
            elif vocab is not None and not os.path.exists(vocab):
                add(("vocab", vocab), f"vocabulary {vocab} does not exist (VOCAB_PATH).")
        else:
            add(("task", task), f"task {task} is not one coda_flax registers (paper tasks: "
                                f"{', '.join(tfds_names)}; offline: "
                                f"{', '.join(OFFLINE_TASK_FILES)}).")

    required = spec.get("initial_checkpoint", {}).get("required")
    _check_checkpoints(spec, experiments, add, required)
    return problems


def _pix2struct_task(add, task: str, stage, bindings) -> None:
    """The TFRecords of the stage's split and Pix2Struct's vocabulary (tasks/pix2struct.py)."""
    from coda_flax.datasets.vision import MissingVisionDataError
    from coda_flax.tasks import pix2struct

    split = "train" if stage.kind != "eval" else literal(bindings.get("SPLIT")) or "validation"
    try:
        pix2struct.split_files(task, split, literal(bindings.get("DATA_DIR")))
    except MissingVisionDataError as e:
        add(("pix2struct", task, split), f"{e} (--gin.DATA_DIR=\"'DIR'\")")
    except KeyError:
        add(("task", task), f"task {task} is not one coda_flax registers (Pix2Struct tasks: "
                            f"{', '.join(pix2struct.PIX2STRUCT_TASKS)}).")
    vocab = literal(bindings.get("VOCAB_PATH"))
    if not vocab:
        add(("vocab-pix2struct", None), f"no vocabulary for {task}: its targets use "
                                        f"{PIX2STRUCT_VOCAB}. Copy it here and pass "
                                        f"--gin.VOCAB_PATH=\"'/path/sentencepiece.model'\".")
    elif "://" not in str(vocab) and not os.path.exists(vocab):
        add(("vocab", vocab), f"vocabulary {vocab} does not exist (VOCAB_PATH): copy "
                              f"{PIX2STRUCT_VOCAB} there.")


def _check_checkpoints(spec, experiments, add, required) -> None:
    presets: dict[str, set] = {}
    for e in experiments:
        train_stage = e.stages[0]
        if train_stage.done() or e.finished():
            continue
        path = literal(train_stage.bindings.get("INITIAL_CHECKPOINT_PATH"))
        if path is None:
            if required:
                add(("ckpt", None), f"no initial checkpoint: pass --gin.INITIAL_CHECKPOINT_PATH. "
                                    f"{table_title(spec)} starts from "
                                    + spec["initial_checkpoint"]["help"])
            continue
        presets.setdefault(path, set()).add(e.preset)
        if "://" not in path and not os.path.exists(os.path.join(path, "config.json")):
            add(("ckpt", path), f"initial checkpoint {path} (preset {e.preset}) is not a coda_flax "
                                f"checkpoint directory (no config.json). "
                                + (f"{table_title(spec)} starts from "
                                   + spec["initial_checkpoint"]["help"] if required else ""))
    for path, used_by in presets.items():
        if len(used_by) > 1:
            add(("ckpt-shared", path),
                f"one INITIAL_CHECKPOINT_PATH ({path}) for several model sizes "
                f"({', '.join(sorted(used_by))}): put {{preset}} in it (replaced per experiment) "
                f"or run one size at a time with --only.")
