"""Analysis of models: numbers and pictures, no argv and no experiment runs.

    summary.py        parameter groups, analytic encoder FLOPs, FLOP-bound speedups
    timing.py         interleaved timing of jitted functions; measure_models (trained models)
    synthetic.py      tiny presets, random / freshly initialised weights, synthetic inputs
    routing_stats.py  routing decisions read back from the encoder, their statistics, ink share
    routing_report.py one input's routing report: decisions, statistics, record, plots, summary
    bench_report.py   `coda bench` output: tables, notes, JSON, speedup plot, the paper's speedups
    estimates.py      accuracies with standard errors over seeds; when two differ (3 SE)
    claims.py         `coda claims`' verdicts per claim, its table and Figure-5 plot

coda_flax.viz (the plots) is the layer below; coda_flax.bench (the benchmarks) the
layer above (tests/test_import_graph.py).
"""
