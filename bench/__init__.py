"""Side-by-side benchmarks of mxnorm_spark against what users would pick instead.

Run ``make bench`` (or ``bench/run.sh``); see ``bench/README`` section in the top-level README.
"""
