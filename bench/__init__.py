"""xpcs-io benchmark suite: ``python -m bench [--quick] [--only w1,w2] [--out DIR]``.

Every workload runs its systems interleaved (A B C, B C A, C A B, ...) so the noise of a
shared machine hits them alike, and reports the median, min and max over repeats. See
``bench/__main__.py`` for the command line and ``BENCHMARKS.md`` for the latest full run.
"""
