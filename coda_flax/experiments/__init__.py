"""End-to-end experiments (tools): each one runs the pipeline dense backbone -> convert ->
finetune variants -> evaluate -> speed, and writes tables and plots.

    demo.py        the Shakespeare "who got it?" demo (`coda demo`)
    compare.py     Parallel Adapter vs CoDA on offline image / speech tasks (`coda compare`)
    claims.py      the paper's trade-off claims at CPU scale (`coda claims`), runs on runner.py
    reproduce.py   the paper's tables as grids of `coda train` / `coda eval` (`coda reproduce`)
    pipeline.py    the steps they share (reuse of finished runs, finetuning, speed tables)
    paper_tables.py, gin_commands.py, prerequisites.py    reproduce's parts: the table specs and
                   their markdown, the `coda train|eval` command lines, the prerequisite checks

Tools do not import tools: what two of them need lives in pipeline.py or coda_flax.analysis.
"""
