"""Instruments for tests and benchmarks (not part of the product, not in the wheel).

`tests.stubs.timing`: a streaming OpenAI-style stub that stamps its own send times, for
measuring the replayer (``python -m tests.stubs.timing``, from the repository root).
"""
