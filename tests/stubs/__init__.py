"""Instruments for tests and benchmarks (not part of the product, not in the wheel).

`tests.stubs.timing`: a streaming OpenAI-style stub that stamps its own send times, for
measuring the replayer (``python -m tests.stubs.timing``, from the repository root).
`tests.stubs.fake_amx`: runs a vLLM server whose attention backend believes the CPU has AMX
tiles, reproducing issue 14's illegal instruction on any x86 CPU (tests/e2e/test_cpu_attention.py).
"""
