"""Table 8 (finetuning hyperparameters) and appendix B's CoDA pretraining recipe, as data.

Blank cells of the printed table repeat the value above them (e.g. RTE .. XSum: batch 128, 300K
steps, Adafactor, 0.001 constant; DocVQA as OCR-VQA; Screen2Words: batch 32, otherwise as
OCR-VQA). The paper sets decoding lengths to the 98th percentile of the training targets but does
not list them: the `targets` lengths below are ours (coda_flax/tasks/features.py).
"""

CAPTION = ("Table 8. Fine-tuning hyperparameters. We use a maximum of 300K steps for NLP tasks "
           "following T5 (Raffel et al., 2020). Pix2struct (Lee et al., 2022) uses 10K fine-tuning "
           "steps for vision tasks. We use 20K steps as CoDA takes longer to train.")

# Printed name -> (input length, batch size, steps, optimizer, learning rate, schedule), as in
# Table 8 (schedule names: ours, coda_flax/train/optimizer.py; "inverse decay" = rsqrt).
TABLE8 = {
    "MNLI":         dict(input_length=128,  batch_size=128, steps=300_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="constant"),
    "RTE":          dict(input_length=256,  batch_size=128, steps=300_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="constant"),
    "BoolQ":        dict(input_length=384,  batch_size=128, steps=300_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="constant"),
    "SQuAD":        dict(input_length=512,  batch_size=128, steps=300_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="constant"),
    "ReCord":       dict(input_length=512,  batch_size=128, steps=300_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="constant"),
    "XSum":         dict(input_length=1664, batch_size=128, steps=300_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="constant"),
    "LibriSpeech":  dict(input_length=3200, batch_size=256, steps=150_000, optimizer="Adafactor",
                         learning_rate=0.001, schedule="rsqrt"),
    "OCR-VQA":      dict(input_length=4096, batch_size=256, steps=20_000, optimizer="Adafactor",
                         learning_rate=0.01, schedule="cosine"),
    "DocVQA":       dict(input_length=4096, batch_size=256, steps=20_000, optimizer="Adafactor",
                         learning_rate=0.01, schedule="cosine"),
    "Screen2Words": dict(input_length=4096, batch_size=32, steps=20_000, optimizer="Adafactor",
                         learning_rate=0.01, schedule="cosine"),
}

# seqio task of each dataset, its metric (key of eval_results.json) and our decoding length
# (vision: bytes of coda_flax.tasks.vision.TARGET_LENGTHS; LibriSpeech: CTC characters, enough
# for 32 s utterances at ~15 characters per second).
TASKS = {
    "MNLI":         dict(task="coda_mnli", metric="accuracy", target_length=8),
    "RTE":          dict(task="coda_rte", metric="accuracy", target_length=8),
    "BoolQ":        dict(task="coda_boolq", metric="accuracy", target_length=8),
    "SQuAD":        dict(task="coda_squad", metric="f1", target_length=32),
    "ReCord":       dict(task="coda_record", metric="f1", target_length=32),
    "XSum":         dict(task="coda_xsum", metric="rouge2", target_length=64),
    "LibriSpeech":  dict(task="coda_librispeech", metric="wer", target_length=600),
    "OCR-VQA":      dict(task="coda_ocrvqa", metric="exact_match", target_length=128),
    "DocVQA":       dict(task="coda_docvqa", metric="anls", target_length=128),
    "Screen2Words": dict(task="coda_screen2words", metric="cider", target_length=128),
}


def finetune(dataset: str, split: str = "validation") -> dict:
    """A column's task, metric, split, TASK_FEATURE_LENGTHS and Table 8 hyperparameters."""
    hp, t = TABLE8[dataset], TASKS[dataset]
    lengths = {"inputs": hp["input_length"]}
    if t["target_length"] is not None:
        lengths["targets"] = t["target_length"]
    return dict(dataset=dataset, task=t["task"], metric=t["metric"], split=split,
                feature_lengths=lengths, train_steps=hp["steps"], batch_size=hp["batch_size"],
                learning_rate=hp["learning_rate"], schedule=hp["schedule"])


# Appendix B: "We run CODA pre-training for text and vision models, using an additional 100K
# steps and 200K steps respectively. For text models, the input sequence length is n = 512 and we
# set the number of selected tokens k = 192. For vision models, [...] n = 4096 image patches and
# we set k = 1024." Span corruption on C4 as T5; batch size and learning rate: runs/pretrain.gin
# (T5's, not restated by the paper). Speech models get no CoDA pretraining.
def coda_pretraining(variant_gin: str, *, modality: str = "text") -> dict:
    if modality == "text":
        return dict(run_gin="runs/pretrain.gin", variant_gin=variant_gin,
                    task="coda_c4_span_corruption", feature_lengths={"inputs": 512, "targets": 114},
                    num_routed=192, train_steps=100_000)
    if modality == "vision":
        return dict(run_gin="runs/pretrain.gin", variant_gin=variant_gin,
                    task="coda_pix2struct_pretraining", feature_lengths={"inputs": 4096},
                    num_routed=1024, train_steps=200_000)
    raise ValueError(f"no CoDA pretraining for modality {modality!r}")
