"""Analysis of models: numbers and pictures, no argv and no experiment runs.

    summary.py        parameter groups, analytic encoder FLOPs, FLOP-bound speedups
    timing.py         interleaved timing of jitted functions; measure_models (trained models)
    synthetic.py      tiny presets, random / freshly initialised weights, synthetic inputs
    routing_stats.py  routing decisions read back from the encoder, their statistics, ink share
    patch_grid.py     Pix2Struct patch positions, the page rebuilt from patches, ink patches
    bench_report.py   `coda bench` output: tables, notes, JSON, speedup plot

coda_flax.bench (the speed benchmarks) and coda_flax.viz (routing plots) sit on this layer too.
"""
