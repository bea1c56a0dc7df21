"""The run directory (docs/run-directory.md): the contract between running and reporting.

- `rundir.base`: the one strict pydantic base; `rundir.errors`: the error root
  ``CotenantError`` and ``RunDirError``;
- `rundir.schema`: the row schemas of requests, telemetry and server metrics;
- `rundir.io`: files written whole or not at all, the append-only JSONL, the one JSON
  reader and the one salvage of ``requests.jsonl``;
- `rundir.envelope`: campaign.json and manifest.json (versioned pydantic models, secrets
  masked), the ``Manifest`` writer and the facts of where and with what a result was made;
- `rundir.ids`: experiment ids, built and parsed;
- `rundir.reader`: the run-directory reader the reports use.

It imports none of orchestrator, servers, workloads and reports; all four may import it.
This package imports nothing itself, so that ``cotenant --help`` stays instant.
"""
