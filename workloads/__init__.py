"""Traces, their generators and importers, prompt synthesis, and the async replayer.

The campaign runner's entry points (imported from their modules; this package imports
nothing itself, so that ``cotenant --help`` stays instant):

- `workloads.build.build_trace`, `workloads.build.offered_rate`: one tenant's requests;
- `workloads.clock.ExperimentClock`: the (wall, monotonic) anchor rows and samples share;
- `workloads.replayer.Target`, `workloads.replayer.replay`, `workloads.replayer.replay_to_dir`;
- `rundir.io.compact_jsonl` (the run-directory package): requests.jsonl → requests.parquet.

Borders: this package knows a server only by its URL, API flavour, served model name,
API key and tokenizer folder; it imports nothing from ``servers`` or ``orchestrator``.
"""
