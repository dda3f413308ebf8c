"""Conformance: checking other implementations against the reference (docs/verify.md).

One module per concern, each importing only the ones above it:

- :mod:`.adapters`    arrays across frameworks (duck typing, DLPack) and diffusers schedulers;
- :mod:`.cases`       settings, cases, inputs and the float64 reference output;
- :mod:`.tolerance`   per-precision tolerances derived from the magnitudes involved;
- :mod:`.comparison`  comparing an output with the reference: :class:`~.comparison.Comparison`;
- :mod:`.diagnoses`   the registry of known bugs that name a failure's likely cause;
- :mod:`.checks`      ``check_*`` / ``assert_*_close`` for user callables, sampler laws;
- :mod:`.strategies`  Hypothesis strategies;
- :mod:`.protocol`    the verify protocol's target wrapper;
- :mod:`.runner`      the plan, the run and the report of ``refdiff verify``;
- :mod:`.vectors`     golden vectors: write, read, check;
- :mod:`.cli`         the ``refdiff verify`` command.

The public names live on in :mod:`refdiff.testing`, :mod:`refdiff.verify`,
:mod:`refdiff.vectors` and :mod:`refdiff.adapters`.
"""
