"""torpor's benchmarks: `python -m bench all|overhead|coldstart|burst|controlplane|affinity|profile`.

Each benchmark starts the real processes it measures on free loopback ports, stops them
even on error, and writes JSON, Markdown and PNG plots to the output folder
(bench/results by default). See bench/results/README.md for the latest full run.
"""
