"""An experiment's record step: a result file that cannot be written leaves its reason in the
manifest, and a full disk is fatal (the campaign stops), for telemetry.parquet and
server_metrics.parquet as for requests.parquet."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from orchestrator.campaign import Experiment
from orchestrator.experiment import Ending, record
from orchestrator.telemetry.sampler import Sampler
from orchestrator.telemetry.scrape import MetricsScraper
from rundir.envelope import Manifest
from tests.unit.runfixtures import manifest
from tests.unit.tickclock import FakeTickClock

EXP = Experiment("a__a__x1__r0", ("a",), ("a",), 0, 1.0, 1, 2)


def _instruments(clock: FakeTickClock) -> tuple[Sampler, MetricsScraper]:
    sampler = Sampler(clock, {}, experiment_id=EXP.id, interval_s=0.05, nvml=False,
                      tick_clock=clock).start()
    scraper = MetricsScraper(clock, {}, experiment_id=EXP.id, tick_clock=clock).start()
    clock.ticks(3, 0.05)
    return sampler, scraper


def _started(tmp_path: Path) -> tuple[Path, Manifest]:
    exp_dir = tmp_path / EXP.id
    exp_dir.mkdir()
    (exp_dir / "requests.jsonl").write_text("")
    data = manifest(EXP.id, "c", resident=EXP.resident, active=EXP.active,
                    tenants={"a": {"kind": "vllm"}}, status="running")
    m = Manifest(exp_dir, {k: v for k, v in data.items() if k != "schema_version"})
    m.start()
    return exp_dir, m


def _disk_full(path: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_every_file_written_completes(tmp_path: Path) -> None:
    exp_dir, m = _started(tmp_path)
    sampler, scraper = _instruments(FakeTickClock())
    out = record(EXP, exp_dir, m, sampler, scraper, Ending())
    man = json.loads(m.path.read_text())
    assert out.status == man["status"] == "completed" and man["reason"] is None
    assert out.fatal is None
    for name in ("telemetry.parquet", "server_metrics.parquet", "requests.parquet"):
        assert (exp_dir / name).is_file(), name


def test_a_full_disk_for_telemetry_fails_the_experiment_and_stops_the_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp_dir, m = _started(tmp_path)
    sampler, scraper = _instruments(FakeTickClock())
    monkeypatch.setattr(sampler, "write", _disk_full)
    out = record(EXP, exp_dir, m, sampler, scraper, Ending())
    man = json.loads(m.path.read_text())
    assert out.status == man["status"] == "failed"
    assert man["reason"].startswith("telemetry.parquet not written: ")
    assert "No space left on device" in man["reason"] and out.reason == man["reason"]
    assert out.fatal is not None and out.fatal.startswith("disk full: ")
    assert not (exp_dir / "telemetry.parquet").exists()
    # the other files are still written
    assert (exp_dir / "server_metrics.parquet").is_file()
    assert (exp_dir / "requests.parquet").is_file()


def test_a_broken_scraper_is_named_and_a_failure_keeps_its_first_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp_dir, m = _started(tmp_path)
    sampler, scraper = _instruments(FakeTickClock())

    def broken() -> None:
        raise RuntimeError("client closed")

    monkeypatch.setattr(scraper, "stop", broken)
    end = Ending(status="failed", reason="tenant a exited (return code -9)")
    out = record(EXP, exp_dir, m, sampler, scraper, end)
    man = json.loads(m.path.read_text())
    assert man["status"] == "failed" and out.fatal is None  # not a full disk: the campaign goes on
    assert man["reason"] == ("tenant a exited (return code -9); "
                             "server_metrics.parquet not written: RuntimeError: client closed")
    assert (exp_dir / "telemetry.parquet").is_file()
