"""T5X's own scripts on the paper's tasks without their data: runs `python -m t5x.<script>
FLAGS...` (train, eval or infer) in this process under tfds.testing.mock_data, which replaces
each TFDS dataset the paper's tasks read (glue/mnli, super_glue/rte, ..., c4/en) by a few
hand-written examples in that dataset's format. The flags are exactly those of the command.

    python tests/t5x_mock_worker.py train --gin_search_paths=... --gin_file=... ...
    python tests/t5x_mock_worker.py t5x.train ...      (the same: `python -m t5x.train ...`'s
                                                        argv with the worker for "-m")
"""

import contextlib
import runpy
import sys

import tensorflow as tf
import tensorflow_datasets as tfds

# The premise fills RTE's 256 input tokens, so that k = ceil(256 / 3) routed tokens are fewer
# than the example's tokens and the router gets a gradient.
NLI = {"premise": " ".join(["A man eats an apple in the garden while the cat sleeps."] * 30),
       "hypothesis": "Someone eats.", "label": 0, "idx": 7}
EXAMPLES = {   # "<tfds name>/<config>" -> one example, repeated
    "glue/mnli": NLI,
    "super_glue/rte": NLI,
    "super_glue/boolq": {"question": "Is the sky blue?", "label": 1, "idx": 4,
                         "passage": "The sky is blue on a clear day because of scattering."},
    "squad/v1.1": {"id": "q1", "title": "T", "question": "Who is there?",
                   "context": "It is me, Bob.",
                   "answers": {"text": ["Bob"], "answer_start": [10]}},
    "super_glue/record": {"passage": "Rome is old.\n@highlight\nIt was founded by Romulus",
                          "query": "@placeholder is old", "entities": ["Rome", "Romulus"],
                          "answers": ["Rome"], "idx": {"passage": 3, "query": 4}},
    "xsum": {"document": "Long text about the weather in Wales, rain and more rain.",
             "summary": "Rain in Wales.", "id": "x1"},
    "c4/en": {"text": " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
              "url": "u", "timestamp": "t"},
}
NUM_EXAMPLES = 16


def _as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del split, decoders, read_config, kwargs
    config = getattr(self, "builder_config", None)
    key = self.name + (f"/{config.name}" if config is not None else "")
    return tf.data.Dataset.from_tensors(EXAMPLES[key]).repeat(NUM_EXAMPLES)


def _one_shard(self, split):
    """Mocked datasets have no split metadata (no file list): one shard per split, so that
    seqio shards the examples of this single process."""
    return [f"{self._tfds_name}-{split}-mock"]


@contextlib.contextmanager
def mocked_tfds():
    """The paper's TFDS datasets replaced by EXAMPLES (for T5X here, or `coda train` in a test)."""
    from coda_flax.tasks.tfds_source import TfdsSource

    original = TfdsSource.list_shards
    TfdsSource.list_shards = _one_shard
    try:
        with tfds.testing.mock_data(as_dataset_fn=_as_dataset,
                                    policy=tfds.testing.MockPolicy.USE_CODE):
            yield
    finally:
        TfdsSource.list_shards = original


def main(argv):
    script, *flags = argv
    module = script if script.startswith("t5x.") else f"t5x.{script}"
    sys.argv = [module, *flags]
    with mocked_tfds():
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
