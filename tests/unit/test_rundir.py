"""The run-directory contract (rundir/): the doc and the code agree, envelopes validate and
mask secrets, ids round-trip, the one salvage and the one JSON reader, the package borders."""

from __future__ import annotations

import ast
import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from rundir import io as rio
from rundir.envelope import (
    SCHEMA_VERSION,
    CampaignEnvelope,
    Manifest,
    ManifestEnvelope,
    experiment_status,
    load_manifest,
    mask_secrets,
    read_campaign,
    write_campaign,
)
from rundir.errors import CotenantError, RunDirError
from rundir.ids import ExperimentId, group_id, group_label
from rundir.io import JsonlAppender, read_json, salvage_requests
from rundir.schema import PROBE_SCHEMA, REQUEST_SCHEMA, SERVER_METRICS_SCHEMA, TELEMETRY_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "run-directory.md"
SECRET_KEY = "s3cret-k3y-value"
SECRET_ENV = "hf_t0ken_value"


# ---- the doc and the code agree ---------------------------------------------------------


def documented(text: str, heading: str) -> list[str]:
    """The names in the first cells of the tables under ``## <heading>``: comma-separated,
    parenthesised remarks and backticks dropped."""
    parts = re.split(r"^## ", text, flags=re.M)
    section = next((p for p in parts if p.startswith(heading)), None)
    assert section is not None, f"docs/run-directory.md has no section '## {heading}'"
    names: list[str] = []
    for line in section.splitlines()[1:]:
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        first = line.split("|")[1].strip()
        if first in ("key", "column"):  # a table's header row
            continue
        first = re.sub(r"\(.*?\)", "", first).replace("`", "")
        names += [n.strip() for n in first.split(",") if n.strip()]
    return names


def contract() -> dict[str, list[str]]:
    """Each section of the doc with a table -> the names the code declares for it."""
    return {
        f"campaign.json (schema_version {SCHEMA_VERSION})": list(CampaignEnvelope.model_fields),
        f"manifest.json (schema_version {SCHEMA_VERSION})": list(ManifestEnvelope.model_fields),
        "requests.parquet": list(REQUEST_SCHEMA),
        "telemetry.parquet": list(TELEMETRY_SCHEMA),
        "server_metrics.parquet": list(SERVER_METRICS_SCHEMA),
        "probes.parquet": list(PROBE_SCHEMA),
    }


def drift(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """{section: (in code, not in the doc; in the doc, not in code)} where they differ."""
    out = {}
    for heading, names in contract().items():
        doc = documented(text, heading)
        assert len(doc) == len(set(doc)), f"{heading}: listed twice: {doc}"
        missing, extra = set(names) - set(doc), set(doc) - set(names)
        if missing or extra:
            out[heading] = (missing, extra)
    return out


def test_the_doc_lists_every_column_and_key_and_nothing_else() -> None:
    assert drift(DOC.read_text()) == {}


def test_the_doc_check_sees_a_drift() -> None:
    text = DOC.read_text()
    assert drift(text.replace("| counts | {tenant: requests recorded} |\n", "")) == {
        f"manifest.json (schema_version {SCHEMA_VERSION})": ({"counts"}, set())}
    gone = text.replace("| batch_size | int |", "| batch_sizes | int |")
    assert drift(gone) == {"requests.parquet": ({"batch_size"}, {"batch_sizes"})}
    with pytest.raises(AssertionError, match="no section"):
        drift(text.replace("## campaign.json (schema_version 1)", "## campaign.json"))


# ---- envelopes: validated, versioned, secrets masked ------------------------------------------


def _spec(tmp_path: Path) -> Any:
    from orchestrator.spec import load_spec

    data = {
        "name": "secrets",
        "tenants": [
            {"name": "llm", "kind": "vllm", "model": "tiny-llama", "api_key": SECRET_KEY,
             "env": {"HF_TOKEN": SECRET_ENV}},
            {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2",
             "env": {"OTHER_TOKEN": SECRET_ENV + "-2"}},
        ],
        "workloads": {
            "llm": {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 2.0}},
            "enc": {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 2.0}},
        },
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_spec(p)[0]


def _campaign_data(spec: Any) -> dict[str, Any]:
    """The keys ``orchestrator.runner.run_campaign`` writes."""
    return {
        "name": spec.name, "spec": spec.model_dump(mode="json"), "versions": {}, "host": {},
        "gpu": None, "backend": "cpu", "plan": {}, "experiments": ["llm__all__x1__r0"],
        "executor": "local", "gpus": None, "address": None, "retries": 0,
        "command": ["cotenant", "run", "spec.yaml"], "started_at": "t0", "resumed_at": None,
        "ended_at": None, "status": "running",
    }


def test_no_secret_reaches_campaign_json_or_a_manifest(tmp_path: Path) -> None:
    from orchestrator.campaign import plan_campaign
    from orchestrator.group import GroupContext
    from orchestrator.group import manifest_for as _manifest

    spec = _spec(tmp_path)
    run_dir = tmp_path / "runs" / spec.name
    write_campaign(run_dir, _campaign_data(spec))
    ctx = GroupContext(spec, tmp_path, None, None, run_dir, "local", "g0")  # type: ignore[arg-type]
    exp = plan_campaign(spec).experiments[0]
    m = _manifest(ctx, exp)
    m.start()
    m.update(workloads={n: spec.workloads[n].model_dump(mode="json") for n in exp.active},
             tenants={t.name: t.model_dump(mode="json") for t in spec.tenants})
    m.finish("completed", counts={"llm": 0})
    files = [run_dir / "campaign.json", run_dir / exp.id / "manifest.json"]
    for f in files:
        text = f.read_text()
        assert SECRET_KEY not in text and SECRET_ENV not in text, f
    spec_back = json.loads(files[0].read_text())["spec"]
    assert [t["env"] for t in spec_back["tenants"]] == [
        {"HF_TOKEN": "**********"}, {"OTHER_TOKEN": "**********"}]  # the names stay
    assert spec_back["tenants"][0]["api_key"] == "**********"
    assert spec_back["tenants"][1]["api_key"] is None  # none set: nothing to mask
    tenants = json.loads(files[1].read_text())["tenants"]
    assert tenants["llm"]["env"] == {"HF_TOKEN": "**********"}
    assert m.data["schema_version"] == SCHEMA_VERSION


def test_resume_compares_the_masked_spec(tmp_path: Path) -> None:
    from orchestrator.errors import CampaignError
    from orchestrator.runner import prepare_run_dir

    spec = _spec(tmp_path)
    out = tmp_path / "runs"
    write_campaign(out / spec.name, _campaign_data(spec))
    assert prepare_run_dir(out, spec, resume=True, overwrite=False) == out / spec.name
    other = spec.model_copy(update={"description": "changed"})
    with pytest.raises(CampaignError, match="the spec changed"):
        prepare_run_dir(out, other, resume=True, overwrite=False)


def test_mask_secrets_copies() -> None:
    data = {"a": [{"env": {"K": "v"}, "api_key": "k"}], "api_key": None}
    masked = mask_secrets(data)
    assert masked == {"a": [{"env": {"K": "**********"}, "api_key": "**********"}], "api_key": None}
    assert data["a"][0]["env"] == {"K": "v"}  # the original is untouched


def test_an_undeclared_or_mistyped_key_is_refused_on_write(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(RunDirError, match=r"campaign.json: .*contract: surprise"):
        write_campaign(tmp_path, _campaign_data(spec) | {"surprise": 1})
    with pytest.raises(RunDirError, match="status"):
        write_campaign(tmp_path, _campaign_data(spec) | {"status": "exploded"})
    assert not (tmp_path / "campaign.json").exists()
    m = Manifest(tmp_path / "e", {"experiment_id": "a__all__x1__r0"})
    with pytest.raises(RunDirError, match="manifest.json: .*contract: .*campaign"):
        m.start()


def test_the_loaders_refuse_an_unknown_schema_version(tmp_path: Path) -> None:
    (tmp_path / "campaign.json").write_text(json.dumps({"schema_version": 2, "name": "x"}))
    with pytest.raises(RunDirError, match=r"campaign.json: schema_version 2 is not one"):
        read_campaign(tmp_path)
    assert read_campaign(tmp_path / "none") is None
    mpath = tmp_path / "e" / "manifest.json"
    mpath.parent.mkdir()
    mpath.write_text(json.dumps({"schema_version": None, "status": "completed"}))
    with pytest.raises(RunDirError, match=r"e/manifest.json: schema_version None"):
        load_manifest(mpath)
    assert experiment_status(tmp_path / "e") == "completed"
    mpath.write_text("{torn")
    assert experiment_status(tmp_path / "e") is None
    assert experiment_status(tmp_path / "none") is None


def test_the_fixtures_write_what_the_envelopes_declare(tmp_path: Path) -> None:
    from tests.unit import runfixtures

    run_dir = runfixtures.write_run(tmp_path)
    CampaignEnvelope.model_validate(read_json(run_dir / "campaign.json"))
    for p in sorted(run_dir.glob("*/manifest.json")):
        ManifestEnvelope.model_validate(read_json(p))


# ---- experiment ids -----------------------------------------------------------------------


def test_experiment_ids_round_trip() -> None:
    e = ExperimentId.of(("a", "b"), ("a", "b"), ["b", "a"], 1.0, 2)
    assert e.format() == str(e) == "a+b__all__x1__r2"
    assert ExperimentId.parse("a+b__all__x1__r2") == e
    assert e.group_id == "a+b__all__x1" and group_id(str(e)) == "a+b__all__x1"
    assert ExperimentId.parse(e.group_id) == e.group
    assert e.label == "a + b" == group_label(e.group_id)
    x = ExperimentId.of(["enc"], ["enc", "llm"], ["enc", "llm", "other"], 0.5, 0)
    assert str(x) == "enc__enc+llm__x0.5__r0" and x.resident == ("enc", "llm")
    assert ExperimentId.parse(str(x)) == x and x.label == "enc (x0.5)"
    assert group_label("a__all__x2") == "a (x2)"
    odd = ExperimentId.parse("my__tenant__all__x1__r0")  # '_' is allowed in a tenant name
    assert odd.active == ("my__tenant",) and odd.group_id == "my__tenant__all__x1"
    assert ExperimentId.parse("my__tenant__all__x1").active == ("my__tenant",)


def test_probe_ids_round_trip_and_never_meet_an_experiment_id() -> None:
    p = ExperimentId.of(("a", "b"), ("a", "b"), ["a", "b"], 0.75, 1, ray=2)
    assert str(p) == "a+b__all__cap2x0.75__r1" and p.probe
    assert ExperimentId.parse(str(p)) == p and p.group_id == "a+b__all__cap2x0.75"
    assert p.label == "a + b (capacity probe, mix 2, x0.75)"
    solo = ExperimentId.parse("a__all__cap0x2.5__r0")
    assert solo.ray == 0 and solo.rate_scale == 2.5 and solo.label == "a (capacity probe, x2.5)"
    plain = ExperimentId.of(("a",), ("a", "b"), ["a", "b"], 2.5, 0)
    assert not plain.probe and str(plain) != str(solo) and plain.group_id != solo.group_id


@pytest.mark.parametrize("bad", ["", "a", "a__all", "a__all__1__r0", "a__all__xfast__r0",
                                 "__all__x1__r0", "a____x1"])
def test_a_string_that_is_no_id_is_refused(bad: str) -> None:
    with pytest.raises(RunDirError, match="not an experiment id"):
        ExperimentId.parse(bad)


def test_the_campaign_plan_builds_its_ids_here(tmp_path: Path) -> None:
    from orchestrator.campaign import experiment_id, plan_campaign

    spec = _spec(tmp_path)
    for e in plan_campaign(spec).experiments:
        eid = ExperimentId.parse(e.id)
        assert eid.active == e.active
        assert (eid.rate_scale, eid.repetition) == (e.rate_scale, e.repetition)
        assert e.id == experiment_id(spec, e.resident, e.active, e.rate_scale, e.repetition)


def test_the_reader_refuses_a_folder_that_is_no_experiment(tmp_path: Path) -> None:
    from rundir.reader import load_run
    from tests.unit import runfixtures

    run_dir = runfixtures.write_run(tmp_path)
    assert load_run(run_dir).experiments
    (run_dir / "stray").mkdir()
    (run_dir / "stray" / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(RunDirError, match=r"stray: 'stray' is not an experiment id"):
        load_run(run_dir)


# ---- the one salvage, the one JSON reader ----------------------------------------------------


def _rows(exp_dir: Path, n: int, torn: bool = True) -> None:
    with JsonlAppender(exp_dir / "requests.jsonl") as out:
        for i in range(n):
            out.write({"experiment_id": "e", "tenant": "a", "request_id": i, "status": "ok"})
    if torn:
        with open(exp_dir / "requests.jsonl", "a") as f:
            f.write('{"request_id": 9')


def test_a_resume_sweeps_the_temporaries_of_writes_killed_mid_way(tmp_path: Path) -> None:
    from rundir.io import sweep_temporaries

    (tmp_path / "e1").mkdir()
    left = [tmp_path / ".capacity.json.8nmaypk4.tmp", tmp_path / "e1" / ".manifest.json.x1.tmp"]
    keep = [tmp_path / "capacity.json", tmp_path / "e1" / "manifest.json", tmp_path / "notes.tmp"]
    for p in left + keep:
        p.write_text("{}")
    assert sorted(sweep_temporaries(tmp_path)) == sorted(left)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in left)


def test_salvage_compacts_what_was_measured(tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    df, err = salvage_requests(tmp_path)
    assert err is None and df.height == 3 and dict(df.schema) == REQUEST_SCHEMA
    assert pl.read_parquet(tmp_path / "requests.parquet").equals(df)
    empty = tmp_path / "none"
    df, err = salvage_requests(empty)  # nothing measured: an empty requests.parquet
    assert err is None and df.height == 0
    assert pl.read_parquet(empty / "requests.parquet").height == 0


def test_salvage_after_a_stop_keeps_what_is_there(tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    pl.DataFrame(schema=REQUEST_SCHEMA).write_parquet(tmp_path / "requests.parquet")
    salvage_requests(tmp_path, keep=True)
    assert pl.read_parquet(tmp_path / "requests.parquet").height == 0  # it stands
    (tmp_path / "requests.parquet").unlink()
    salvage_requests(tmp_path, keep=True)
    assert pl.read_parquet(tmp_path / "requests.parquet").height == 3
    nothing = tmp_path / "none"
    nothing.mkdir()
    salvage_requests(nothing, keep=True)
    assert list(nothing.iterdir()) == []  # no jsonl: nothing written


def test_salvage_returns_a_full_disk_with_the_rows(tmp_path: Path, monkeypatch) -> None:
    _rows(tmp_path, 2)

    def full(path: Any, df: pl.DataFrame) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(rio, "atomic_write_parquet", full)
    df, err = salvage_requests(tmp_path)
    assert df.height == 2 and err is not None and err.errno == errno.ENOSPC
    assert not (tmp_path / "requests.parquet").exists()


def test_read_json_names_the_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    p.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(RunDirError, match=r"m.json: not valid JSON \(line 3\)"):
        read_json(p)
    p.write_text("[1, 2]")
    with pytest.raises(RunDirError, match="m.json: expected a JSON object"):
        read_json(p)
    with pytest.raises(RunDirError, match="nope.json: cannot read"):
        read_json(tmp_path / "nope.json")


# ---- one error root, one base, the borders -------------------------------------------------


def test_every_package_error_is_a_cotenant_error_and_the_cli_shows_it(tmp_path: Path,
                                                                       capsys) -> None:
    from orchestrator.cli import main
    from orchestrator.errors import OrchestratorError
    from reports.errors import ReportError
    from servers.errors import ServerError
    from workloads.errors import WorkloadError

    for root in (OrchestratorError, ReportError, ServerError, WorkloadError, RunDirError):
        assert issubclass(root, CotenantError)
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such run directory"


def test_the_specs_share_the_one_strict_base() -> None:
    from orchestrator.spec import CampaignSpec
    from rundir.base import StrictModel
    from servers.spec import VllmTenant
    from workloads.spec import PoissonArrivals

    for model in (CampaignSpec, VllmTenant, PoissonArrivals, CampaignEnvelope, ManifestEnvelope):
        assert issubclass(model, StrictModel)


def _imports(folder: Path) -> set[str]:
    out: set[str] = set()
    for f in folder.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out.add(node.module.split(".")[0])
    return out


def test_rundir_imports_none_of_the_four_and_reports_no_workloads() -> None:
    assert not _imports(ROOT / "rundir") & {"orchestrator", "servers", "workloads", "reports"}
    assert "workloads" not in _imports(ROOT / "reports")
