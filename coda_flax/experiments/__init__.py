"""End-to-end experiments (tools): each one runs the pipeline dense backbone -> convert ->
finetune variants -> evaluate -> speed, and writes tables and plots.

    demo.py        the Shakespeare "who got it?" demo (`coda demo`)
    compare.py     Parallel Adapter vs CoDA on offline image / speech tasks (`coda compare`)
    claims.py      the paper's trade-off claims at CPU scale (`coda claims`), runs on runner.py
    reproduce.py   the paper's tables as grids of `coda train` / `coda eval` (`coda reproduce`)
    runner.py      the one experiment pipeline: Run specs trained once, fingerprinted, reused
    demo_runs.py   the demo's settings, variants and Run specs (the demo and the sweep use them)
    pipeline.py    the steps they share besides running (parameter counts, speed tables, JSON)
    paper_tables.py, gin_commands.py, prerequisites.py    reproduce's parts: the table specs and
                   their markdown, the `coda train|eval` command lines, the prerequisite checks

Tools do not import tools: what two of them need lives in runner.py, pipeline.py, demo_runs.py
or coda_flax.analysis.
"""
