"""Train / evaluate / infer on SeqIO tasks: the functions the gin run files configure.

`train` takes its settings as a few frozen dataclasses (coda_flax/train/settings.py), which gin
builds at the edge from flat `train.NAME` bindings (coda_flax/train/gin_config.py); `evaluate`
and `infer` take plain keyword arguments.
Batches use seqio's EncDecFeatureConverter keys; the data position is a batch count, so a
resumed run skips exactly the batches it has already seen.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from coda_flax.config import ModelConfig
from coda_flax.datasets import provenance
from coda_flax.inputs import encoder_length, input_shape
from coda_flax.tasks.metrics import as_text
from coda_flax.train.ctc_model import make_model
from coda_flax.train.settings import (CheckpointSettings, DataSettings, EvalSettings,
                                      GuardSettings, OptimizerSettings, ScheduleSettings,
                                      check_settings, flat_settings)
from coda_flax.train.t5_model import CodaT5Model
from coda_flax.train.trainer import Trainer, TrainerConfig, check_token_ids


# ------------------------------------------------------------------------------ tasks
def _reads_outside(name: str, data_dir: str | None) -> bool:
    """Whether the registered task `name` (or a mixture's tasks) reads prepared dataset folders
    (datasets.provenance.bound) outside data_dir."""
    if data_dir is None:
        return False
    import seqio

    from coda_flax.tasks import registry
    found = registry.get_task_or_mixture(name)
    names = [t.name for t in found.tasks] if isinstance(found, seqio.Mixture) else [name]
    root = os.path.realpath(data_dir)
    return any(os.path.commonpath([root, os.path.realpath(d)]) != root
               for n in names for d in provenance.bound(n))


def ensure_registered(name: str, data_dir: str | None = None, vocab_path: str | None = None,
                      tfds_data_dir: str | None = None):
    """Registers the offline or paper tasks on first use; returns the seqio task/mixture.

    One of coda_flax's tasks registered already over prepared folders outside `data_dir` (by an
    earlier run in this process on other data) is registered again over data_dir, so that a
    second run never reads the first run's files."""
    from coda_flax import tasks
    from coda_flax.tasks import registry
    families = (*tasks.OFFLINE_TASKS, *tasks.SPEECH_TASKS, *tasks.VISION_TASKS,
                *tasks.PIX2STRUCT_TASKS)
    if name not in registry.registered_names() or (
            name in families and _reads_outside(name, data_dir)):
        if name in tasks.OFFLINE_TASKS:
            tasks.register_offline_tasks(data_dir, vocab_path)
        elif name in tasks.PAPER_TASKS:
            tasks.register_paper_tasks(vocab_path, tfds_data_dir)
        elif name in tasks.SPEECH_TASKS:
            tasks.register_speech_tasks(data_dir)
        elif name in tasks.VISION_TASKS:
            tasks.register_vision_tasks(data_dir)
        elif name in tasks.PIX2STRUCT_TASKS:      # Pix2Struct's TFRecords, its SentencePiece
            tasks.register_pix2struct_tasks(data_dir, vocabulary=(     # no extra ids, as its gin
                tasks.get_vocabulary(vocab_path, extra_ids=0) if vocab_path else None))
        else:
            known = sorted({*registry.registered_names(), *tasks.OFFLINE_TASKS,
                            *tasks.PAPER_TASKS, *tasks.SPEECH_TASKS, *tasks.VISION_TASKS,
                            *tasks.PIX2STRUCT_TASKS})
            raise tasks.UnknownTaskError(f"unknown task or mixture {name!r}; coda_flax knows: "
                                         f"{', '.join(known)}.")
    return tasks.get_task_or_mixture(name)


def _features(task) -> tuple:
    return task.output_features["inputs"].vocabulary, task.output_features["targets"].vocabulary


def seqio_batches(name: str, feature_lengths: Mapping[str, int], batch_size: int, split: str,
                  *, shuffle: bool = True, seed: int = 0, repeat: bool = True,
                  feature_converter_cls=None):
    """start -> iterator of numpy batches (this process's rows) from batch `start` on.

    feature_converter_cls: the model's FEATURE_CONVERTER_CLS (default EncDecFeatureConverter;
    image / audio models read float vectors through ContinuousEncDecFeatureConverter)."""
    import seqio
    converter = (feature_converter_cls or seqio.EncDecFeatureConverter)(pack=False)
    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ValueError(f"BATCH_SIZE={batch_size} must be divisible by the {count} processes.")
    ds = seqio.get_dataset(name, dict(feature_lengths), converter,
                           dataset_split=split, shuffle=shuffle, num_epochs=None if repeat else 1,
                           shard_info=seqio.ShardInfo(index, count), seed=seed, verbose=False)
    ds = ds.batch(batch_size // count, drop_remainder=repeat)

    def batches(start: int):
        rows = ds.skip(start).as_numpy_iterator()
        first = next(rows, None)
        if first is None and repeat:        # repeated and still empty: no full batch at all
            raise ValueError(f"task {name!r} split {split!r} has no training batch: fewer than "
                             f"batch_size={batch_size} examples (none at all if the split is "
                             f"empty); check the data, or lower BATCH_SIZE.")
        return itertools.chain([] if first is None else [first], rows)
    return batches


def eval_examples(task, feature_lengths: Mapping[str, int], split: str,
                  max_examples: int | None = None) -> list[dict]:
    """Tokenised examples with their raw text (for decoding metrics), in a fixed order."""
    ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1)
    if max_examples:
        ds = ds.take(max_examples)
    return list(ds.as_numpy_iterator())


def _pad(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Token ids [len] -> int32 [b, length]; vectors [len, dim] -> float32 [b, length, dim]."""
    first = np.asarray(seqs[0])
    dtype = np.int32 if first.ndim == 1 else np.float32
    out = np.zeros((len(seqs), length, *first.shape[1:]), dtype)
    for i, s in enumerate(seqs):
        s = np.asarray(s)[:length]
        out[i, :len(s)] = s
    return out


def to_batch(examples: Sequence[Mapping[str, Any]], feature_lengths: Mapping[str, int]) -> dict:
    """EncDecFeatureConverter's layout (unpacked) for a list of tokenised examples."""
    enc = _pad([e["inputs"] for e in examples], feature_lengths["inputs"])
    tgt = _pad([e["targets"] for e in examples], feature_lengths["targets"])
    dec = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def decode_ids(vocab, ids, eos_id) -> str:
    """Text of one decode: up to the first EOS (when the model has one), padding dropped."""
    ids = [int(t) for t in ids]
    if eos_id is not None and eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return vocab.decode([t for t in ids if t > 0])


# ------------------------------------------------------------------------------ evaluation
def target_text(task, example, eos_id) -> str:
    """The raw target string of a tokenised example."""
    _, out_vocab = _features(task)
    return as_text(example.get("targets_pretokenized",
                               decode_ids(out_vocab, example["targets"], eos_id)))


def postprocess(task, text: str, example, is_target: bool):
    fn = getattr(task, "postprocess_fn", None)           # a seqio.Mixture has none
    return fn(text, example=example, is_target=is_target) if fn else text


def task_metrics(task, targets, predictions) -> dict:
    """Every metric of the task on postprocessed targets / predictions, as floats."""
    results = {}
    for fn in getattr(task, "metric_fns", ()):            # a seqio.Mixture has none
        results.update({k: float(getattr(v, "value", v))
                        for k, v in fn(targets, predictions).items()})
    return results


def evaluate_params(model, params, task, feature_lengths: Mapping[str, int],
                    split: str = "validation", batch_size: int = 32,
                    max_examples: int | None = None, predictions_path: str | None = None) -> dict:
    """Teacher-forced loss (/ token accuracy) and the task's metrics on greedy decodes."""
    examples = eval_examples(task, feature_lengths, split, max_examples)
    if not examples:
        raise ValueError(f"task {task.name!r} split {split!r} has no examples.")
    _, out_vocab = _features(task)
    loss_fn = jax.jit(model.eval_fn)
    predict = jax.jit(model.predict_batch)
    totals, weight, predictions, targets, rows = {}, 0.0, [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))     # static shapes
        batch = to_batch(padded, feature_lengths)
        batch["decoder_loss_weights"][len(chunk):] = 0.0               # the filler rows
        check_token_ids(batch, model.config.vocab_size,
                        f"task {task.name!r} split {split!r} examples {start}..")
        _, metrics = loss_fn(params, batch)
        w = float(metrics.get("weight_sum", np.sum(batch["decoder_loss_weights"])))
        totals["loss"] = totals.get("loss", 0.0) + float(metrics["cross_ent_loss"])  # a sum
        if "accuracy" in metrics:                                   # not for CTC models
            totals["correct"] = totals.get("correct", 0.0) + float(metrics["accuracy"]) * w
        weight += w
        decodes = np.asarray(predict(params, batch))[:len(chunk)]
        for ex, tokens in zip(chunk, decodes):
            text = decode_ids(out_vocab, tokens, model.eos_id)
            target = target_text(task, ex, model.eos_id)
            predictions.append(postprocess(task, text, ex, is_target=False))
            targets.append(postprocess(task, target, ex, is_target=True))
            rows.append({"input": as_text(ex.get("inputs_pretokenized", "")), "target": target,
                         "prediction": text})
    results = {"loss_per_token": totals["loss"] / max(weight, 1.0),
               "num_examples": len(examples)}
    if not np.isfinite(results["loss_per_token"]):
        raise FloatingPointError(
            f"the evaluation loss on task {task.name!r} split {split!r} is "
            f"{results['loss_per_token']}: the parameters (or the inputs) are not finite; a "
            f"checkpoint saved with non-finite values, or damaged, cannot be evaluated.")
    if "correct" in totals:
        results["token_accuracy"] = totals["correct"] / max(weight, 1.0)
    results.update(task_metrics(task, targets, predictions))
    if predictions_path:
        with open(predictions_path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return results


# ------------------------------------------------------------------------------ entry points
def _truncation(examples, input_length: int, allow: bool) -> None:
    """Refuses (or, allowed, reports) inputs longer than input_length tokens."""
    lengths = [len(e["inputs"]) for e in examples]
    long = [n for n in lengths if n > input_length]
    if not long:
        return
    what = (f"{len(long)} of {len(lengths)} inputs are longer than input_length {input_length} "
            f"tokens (EOS included; the longest has {max(long)})")
    if not allow:
        raise ValueError(f"{what}; raise input_length (INPUT_LENGTH), or set "
                         f"infer.allow_truncation=True to cut them to {input_length} tokens.")
    print(f"[infer] {what}: truncated to {input_length} tokens.", file=sys.stderr)


def _initial_params(model_config: ModelConfig, path: str | None):
    """Params from a `coda convert` / training checkpoint; a dense one is converted to CoDA."""
    if not path:
        return None
    from coda_flax.checkpoints import dense_to_coda, load_checkpoint
    config, params = load_checkpoint(path)
    has_adapters = any("adapter" in k for k in _flat_keys(params))
    if model_config.coda is not None and not has_adapters:
        params = dense_to_coda(params, model_config.coda, 0, model_config=model_config)
    return params


def _flat_keys(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flat_keys(v, f"{prefix}{k}/")
        else:
            yield prefix + k


def _input_shapes(config: ModelConfig, feature_lengths, batch_size):
    return {"encoder_input_tokens": input_shape(config, batch_size, feature_lengths["inputs"]),
            "decoder_input_tokens": (batch_size, feature_lengths["targets"])}


def train(*, model_config: ModelConfig, data: DataSettings, schedule: ScheduleSettings,
          checkpoints: CheckpointSettings, optimizer: OptimizerSettings = OptimizerSettings(),
          evaluation: EvalSettings = EvalSettings(), guard: GuardSettings = GuardSettings(),
          seed: int = 0, num_partitions: int = 1, log_every: int = 50, progress: bool = True,
          extra_files: Mapping[str, str] | None = None):
    """Trains `model_config` on a SeqIO task; evaluates at eval_every and at the end.

    Args:
        model_config: the model (coda=None: dense).
        data, schedule, checkpoints, optimizer, evaluation, guard: the settings groups
            (coda_flax/train/settings.py; `settings.train_arguments` builds them from flat
            names, as gin's `train.NAME` bindings give them).
        seed: parameter initialisation, dropout and data order. num_partitions: the 'model'
            mesh axis. log_every: steps between logged metrics. progress: the progress bar.
        extra_files: {name: text} written into MODEL_DIR (e.g. the resolved config.gin).
    Returns:
        {"params", "history" (logged train metrics), "eval" (the final evaluation)}; the final
        parameters are also saved to MODEL_DIR/final (a `load_checkpoint` directory).
        MODEL_DIR is locked for the run (a second run there is refused,
        coda_flax/train/lock.py).
    """
    check_settings("train", flat_settings(**locals()))  # before MODEL_DIR, its lock, config.gin
    task = ensure_registered(data.mixture_or_task_name, data.data_dir, data.vocab_path,
                             data.tfds_data_dir)                                     # data too
    import contextlib

    from coda_flax.checkpoints import save_checkpoint
    from coda_flax.train.lock import ModelDirLock
    model_dir, lengths = checkpoints.model_dir, data.task_feature_lengths
    # one run per MODEL_DIR: refused before anything in it (config.gin, metrics) is touched
    with (ModelDirLock(model_dir) if jax.process_index() == 0 else contextlib.nullcontext()):
        if jax.process_index() == 0:   # the datasets' hashes: recorded, compared when resuming
            provenance.check_run(model_dir, provenance.fingerprint(data.mixture_or_task_name))
        for name, text in (extra_files or {}).items():        # e.g. the resolved gin config
            with open(os.path.join(model_dir, name), "w") as f:
                f.write(text)
        model = make_model(model_config, z_loss=optimizer.z_loss,
                           label_smoothing=optimizer.label_smoothing)
        # the data first: a missing file fails before any checkpoint machinery exists
        batches = seqio_batches(data.mixture_or_task_name, lengths, data.batch_size, "train",
                                seed=seed, feature_converter_cls=model.FEATURE_CONVERTER_CLS)
        trainer = Trainer(model, trainer_config(schedule, checkpoints, optimizer, evaluation,
                                                guard, seed=seed, num_partitions=num_partitions,
                                                log_every=log_every, progress=progress))
        state = trainer.init_state(_input_shapes(model_config, lengths, data.batch_size),
                                   _initial_params(model_config,
                                                   checkpoints.initial_checkpoint_path))
        evals = {}

        def eval_fn(params, step):
            evals[step] = evaluate_params(model, params, task, lengths, evaluation.eval_split,
                                          evaluation.eval_batch_size,
                                          evaluation.eval_max_examples)
            return evals[step]
        try:
            state, history = trainer.train(state, batches,
                                           n=encoder_length(model_config, lengths["inputs"]),
                                           eval_fn=eval_fn)
        finally:            # orbax's background threads end here, not at interpreter exit
            trainer.checkpoints.close()
        params = jax.device_get(trainer.params(state))
        if jax.process_index() == 0:
            save_checkpoint(os.path.join(model_dir, "final"), params, model_config,
                            overwrite=True)
    return {"params": params, "history": history, "eval": evals.get(max(evals, default=-1))}


def trainer_config(schedule: ScheduleSettings, checkpoints: CheckpointSettings,
                   optimizer: OptimizerSettings, evaluation: EvalSettings, guard: GuardSettings,
                   *, seed: int, num_partitions: int, log_every: int,
                   progress: bool) -> TrainerConfig:
    """The Trainer's config (what each checkpoint records) of run.train's settings."""
    return TrainerConfig(
        model_dir=checkpoints.model_dir, total_steps=schedule.train_steps,
        learning_rate=schedule.learning_rate, schedule=schedule.schedule,
        warmup_steps=schedule.warmup_steps, trainable=optimizer.trainable,
        checkpoint_every=checkpoints.checkpoint_every,
        keep_checkpoints=checkpoints.keep_checkpoints, log_every=log_every,
        eval_every=evaluation.eval_every, seed=seed, num_partitions=num_partitions,
        k_anneal_fraction=schedule.k_anneal_fraction, k_anneal_stages=schedule.k_anneal_stages,
        parameter_scale=optimizer.parameter_scale, progress=progress,
        max_abs_param=guard.max_abs_param, max_update_ratio=guard.max_update_ratio)


def evaluate(*, model_config: ModelConfig | None = None, checkpoint_path: str,
             mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
             output_dir: str, split: str = "validation", batch_size: int = 32,
             max_examples: int | None = None, data_dir: str | None = None,
             vocab_path: str | None = None, tfds_data_dir: str | None = None) -> dict:
    """Metrics of a checkpoint on a task split -> output_dir/eval_results.json (+ predictions)."""
    check_settings("evaluate", locals())
    from coda_flax.checkpoints import load_checkpoint
    task = ensure_registered(mixture_or_task_name, data_dir, vocab_path, tfds_data_dir)
    saved_config, params = load_checkpoint(checkpoint_path)
    model = make_model(model_config or saved_config)
    os.makedirs(output_dir, exist_ok=True)
    results = evaluate_params(model, params, task, task_feature_lengths, split, batch_size,
                              max_examples, os.path.join(output_dir, f"predictions_{split}.jsonl"))
    with open(os.path.join(output_dir, "eval_results.json"), "w") as f:
        json.dump({"task": mixture_or_task_name, "split": split, **results}, f, indent=2)
    return results


def infer(*, checkpoint_path: str, inputs: Sequence[str], output_path: str,
          input_length: int = 512, target_length: int = 64, vocab_path: str | None = None,
          data_dir: str | None = None, num_decodes: int = 1,
          allow_truncation: bool = False) -> list[str]:
    """Greedy (or beam, num_decodes > 1) decodes of raw input strings -> JSONL.

    An input longer than input_length tokens (EOS included) is refused, unless allow_truncation:
    then it is cut to input_length and the count is reported on stderr."""
    check_settings("infer", locals())
    from coda_flax.checkpoints import load_checkpoint
    from coda_flax.tasks import vocab as vocab_lib
    if vocab_path is None:
        from coda_flax.tasks.offline import default_vocab_path
        vocab_path = default_vocab_path(data_dir)
    vocab = vocab_lib.get_vocabulary(vocab_path)
    config, params = load_checkpoint(checkpoint_path)
    if config.encoder_input != "tokens":
        raise ValueError(f"infer takes text inputs; {checkpoint_path} is an "
                         f"encoder_input={config.encoder_input!r} model: run `coda eval` on an "
                         f"image / audio task instead.")
    model = CodaT5Model(config)
    examples = [{"inputs": np.asarray(vocab.encode(text) + [1], np.int32),
                 "targets": np.zeros((1,), np.int32)} for text in inputs]
    _truncation(examples, input_length, allow_truncation)
    batch = to_batch(examples, {"inputs": input_length, "targets": target_length})
    check_token_ids(batch, config.vocab_size, f"infer inputs (vocabulary {vocab_path})")
    decodes = np.asarray(model.predict_batch(params, batch, num_decodes=num_decodes))
    outputs = [vocab.decode([int(t) for t in row if t > 1]) for row in decodes]
    with open(output_path, "w") as f:
        for text, out in zip(inputs, outputs):
            f.write(json.dumps({"input": text, "output": out}) + "\n")
    return outputs
