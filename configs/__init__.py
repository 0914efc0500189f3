"""The paper's result tables as experiment grids over gin files (configs as data).

Lei et al. 2023, "Conditional Adapters: Parameter-efficient Transfer Learning with Fast
Inference" (arXiv 2304.04947). One module per table; each defines a plain dict `TABLE`:

    table2.py   CoDA on T5 v1.1 Base/Large/XL x MNLI/RTE/BoolQ: PA vs k-to-all / k-to-k, r = 3, 5
    table3.py   router ablation (soft top-k / sigmoid / first-k truncation), k-to-k, r = 3, 5
    table4.py   the paper's XL text model on 6 tasks (XSum on its test set) + reference rows
    table9.py   the paper's text models Base/Large/XL on 6 tasks (development sets)
    table5.py   LibriSpeech WER (not runnable: BEST-RQ weights, transducer; see coda compare)
    table6.py   Pix2Struct OCR-VQA / DocVQA / Screen2Words (the public Pix2Struct-Large converted by
                `coda convert`; both engines)
    table8.py   Table 8's finetuning hyperparameters (and the pretraining recipe of appendix B),
                used by the tables above

`coda reproduce --table N` (coda_flax/experiments/reproduce.py) expands a TABLE into
experiments (one per row x column cell) and runs `coda train` / `coda eval` for each.

TABLE schema (every value is plain data: str, int, float, None, list, dict):

    id, number, title, caption        caption transcribed exactly from the paper text
    status                            "ready" or "not_implemented" (+ status_note: why)
    label_columns                     header of the leading label columns, e.g. ["Model", "r"]
    decimals                          digits of the metric cells (the paper's precision)
    delta_avg                         None or {"label": "Δ Avg", "decimals": 1}: mean of a row's
                                      metric cells minus that of its row["delta_baseline"]
    initial_checkpoint                {"required": bool, "help": how to make it}
    columns: list of                  key, label, group (header prefix, e.g. "Base"), kind
                                      ("metric": a cell with an experiment; "paper_only": quoted
                                      from the paper, e.g. measured speed-ups), task, split, metric
                                      (key of eval_results.json), feature_lengths, train_steps,
                                      batch_size, learning_rate, schedule (Table 8), and model_gin
                                      + preset when the column fixes the model size
    rows: list of                     key, labels (one per label column), section (a group title
                                      row such as "Base", optional), reference (True: results of
                                      other work, quoted only), variant_gin, reduction (REDUCTION
                                      macro; None for the Parallel Adapter), model_gin + preset
                                      when the row fixes the model size, pretrain (None or the
                                      CoDA pretraining stage, see table8.coda_pretraining),
                                      paper {column key: number}, paper_text {column key: the
                                      printed text where it is not just the number},
                                      paper_delta_avg, delta_baseline
"""

TABLES = ("table2", "table3", "table4", "table5", "table6", "table9")
