"""Does EMA normalization (MXNorm) help a model train? The article's claim, tested.

``make seed-claim`` (or ``python -m bench.seed_claim.run``) trains mini-batch classifiers
on scikit-learn's bundled digits and on synthetic streams, with raw, static z-score and
MXNorm inputs, and writes ``bench/seed_claim/RESULTS.md`` and ``accuracy.png``.
"""
