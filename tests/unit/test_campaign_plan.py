"""The campaign plan: order seeds (fresh, fixed, recorded), blocks, server lifetimes (chunks),
paired trace seeds, added blocks for precision, and the batch-limit notes of `cotenant plan`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from orchestrator.campaign import (
    batch_limit_notes,
    chunk_of,
    plan_campaign,
    planned_blocks,
    resolve_order_seed,
    resolve_restarts,
    slo_e2e_bound,
)
from orchestrator.spec import Slo, parse_spec

BASE = {
    "name": "t",
    "tenants": [
        {"name": "a", "kind": "vllm", "model": "tiny-llama", "max_num_seqs": 8},
        {"name": "b", "kind": "vllm", "model": "tiny-llama-wide"},
        {"name": "e", "kind": "encoder", "model": "all-minilm-l6-v2"},
    ],
    "workloads": {
        n: {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 1}} for n in "abe"
    },
    "strategy": ["isolated", "pairs"],
}


def spec(**experiment: object) -> object:
    return parse_spec({**BASE, "experiment": experiment})


def test_a_fresh_order_seed_per_campaign_unless_one_is_given() -> None:
    s = spec(repetitions=2)
    seeds = {plan_campaign(s).order_seed for _ in range(5)}
    assert len(seeds) == 5  # drawn afresh each time
    fixed = spec(repetitions=2, seed=11)
    assert plan_campaign(fixed).order_seed == 11
    assert resolve_order_seed(fixed) == 11
    assert resolve_order_seed(fixed, override=5) == 5  # --seed beats the spec
    assert resolve_order_seed(fixed, override=5, recorded=3) == 3  # a resume: campaign.json's


def test_the_same_order_seed_gives_the_same_plan_and_another_a_different_order() -> None:
    s = spec(repetitions=4)
    a, b = plan_campaign(s, 7), plan_campaign(s, 7)
    assert [(e.id, e.seed, e.prompt_seed, e.chunk) for e in a.experiments] == [
        (e.id, e.seed, e.prompt_seed, e.chunk) for e in b.experiments]
    other = plan_campaign(s, 8)
    assert [e.id for e in other.experiments] != [e.id for e in a.experiments]
    assert sorted(e.id for e in other.experiments) == sorted(e.id for e in a.experiments)
    # arrivals differ between campaigns, are paired within one
    assert {e.seed for e in other.experiments}.isdisjoint({e.seed for e in a.experiments})
    assert all(e.order_seed == 7 for e in a.experiments)


def test_a_block_holds_every_cell_once_with_paired_arrivals() -> None:
    s = spec(repetitions=3, rate_scales=[1.0, 2.0])
    p = plan_campaign(s, 1)
    exps = p.experiments
    cells = 6 * 2  # 3 alone + 3 pairs, at 2 rates
    assert len(exps) == 3 * cells
    for k in range(3):
        block = exps[k * cells:(k + 1) * cells]
        assert {e.repetition for e in block} == {k}  # blocks are contiguous
        assert Counter((e.active, e.rate_scale) for e in block) == Counter(
            {(e.active, e.rate_scale): 1 for e in block})
        for e in block:
            assert e.to_dict()["block"] == k and e.to_dict()["order_seed"] == 1
        # the same arrivals alone and co-located in a block
        alone = next(e for e in block if e.active == ("a",) and e.rate_scale == 1.0)
        pair = next(e for e in block if e.active == ("a", "b") and e.rate_scale == 1.0)
        assert alone.tenant_seed("a") == pair.tenant_seed("a")
    # the order inside blocks is shuffled, not the same every block
    orders = {tuple(e.id.rsplit("__", 1)[0] for e in exps[k * cells:(k + 1) * cells])
              for k in range(3)}
    assert len(orders) > 1


@pytest.mark.parametrize(("blocks", "chunks", "want"), [
    (5, 2, [0, 0, 0, 1, 1]),
    (4, 2, [0, 0, 1, 1]),
    (3, 3, [0, 1, 2]),
    (6, 1, [0] * 6),
])
def test_chunks_are_contiguous_and_balanced(blocks: int, chunks: int, want: list[int]) -> None:
    assert [chunk_of(b, blocks, chunks) for b in range(blocks)] == want


def test_restarts_resolve_per_device_and_split_the_blocks() -> None:
    assert resolve_restarts(spec(repetitions=4), gpu=True) == 2
    assert resolve_restarts(spec(repetitions=4), gpu=False) == 1
    assert resolve_restarts(spec(repetitions=1), gpu=True) == 1  # never more than the blocks
    assert resolve_restarts(spec(repetitions=4, restarts=3), gpu=False) == 3
    p = plan_campaign(spec(repetitions=4), 0, restarts=2)
    assert p.restarts == 2
    assert [(e.repetition, e.chunk) for e in p.experiments][::6] == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_added_blocks_follow_the_plan_rules_and_a_resume_replans_them() -> None:
    s = spec(repetitions=2, precision={"half_width": 0.05, "max_repetitions": 10})
    p = plan_campaign(s, 3, restarts=2)
    new = p.extend(3)
    assert p.blocks == 5 and {e.repetition for e in new} == {2, 3, 4} and len(new) == 18
    assert {e.chunk for e in new} == {2}  # one new server lifetime after the planned ones
    assert p.experiments[-18:] == new
    again = plan_campaign(s, 3, restarts=2, blocks=5)  # what a resume plans from campaign.json
    assert [(e.id, e.seed, e.prompt_seed, e.chunk) for e in again.experiments] == [
        (e.id, e.seed, e.prompt_seed, e.chunk) for e in p.experiments]
    assert planned_blocks([e.id for e in p.experiments]) == 5 and planned_blocks([]) == 0


def test_the_slo_implies_an_e2e_bound() -> None:
    assert slo_e2e_bound(None, 10) == (None, "")
    assert slo_e2e_bound(Slo(e2e_ms=300, ttft_ms=10, tpot_ms=1), 10)[0] == 0.3
    bound, basis = slo_e2e_bound(Slo(ttft_ms=200, tpot_ms=20), 128)
    assert bound == pytest.approx(0.2 + 127 * 0.02) and "127 x tpot 20 ms" in basis
    assert slo_e2e_bound(Slo(ttft_ms=200), 128) == (None, "")


def test_the_plan_warns_where_the_batch_limit_binds_before_the_slo() -> None:
    data = {**BASE, "experiment": {"rate_scales": [1.0, 4.0]},
            "workloads": {**BASE["workloads"], "a": {
                "kind": "synthetic", "arrival": {"process": "poisson", "rate": 2},
                "output_tokens": {"dist": "uniform", "low": 10, "high": 30}}},
            "slo": {"a": {"ttft_ms": 500, "tpot_ms": 100}}}
    notes = {(n.tenant, n.rate_scale): n for n in batch_limit_notes(parse_spec(data), Path("."))}
    assert set(notes) == {("a", 1.0), ("a", 4.0), ("b", 1.0), ("b", 4.0)}  # decoders only
    # SLO bound: 0.5 + (20 - 1) x 0.1 = 2.4 s; budget 8 / 2 = 4 s at x1, 8 / 8 = 1 s at x4
    x1, x4 = notes[("a", 1.0)], notes[("a", 4.0)]
    assert x1.budget_s == 4.0 and x1.slo_e2e_s == pytest.approx(2.4) and not x1.warn
    assert x4.budget_s == 1.0 and x4.warn and "batch limit binds before the SLO" in x4.text()
    assert "max_num_seqs 8" in x4.text() and "1 s" in x4.text()
    assert not notes[("b", 4.0)].warn and "names no E2E bound" in notes[("b", 4.0)].text()


def test_the_commands_show_the_seed_lifetimes_and_the_batch_limit(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from orchestrator.cli.campaign import plan, run

    data = {**BASE, "experiment": {"repetitions": 4, "restarts": 2, "rate_scales": [1.0, 8.0]},
            "slo": {"a": {"ttft_ms": 500, "tpot_ms": 100}}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(plan, [str(p)], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    # a: 8 seqs at 8 req/s is a 1 s budget; the SLO allows 0.5 + 63 x 0.1 s
    assert "warning: a x8: 8 req/s; max_num_seqs 8 holds it while mean E2E stays under 1 s" in out.output
    assert "batch limit: a x1:" in out.output and "the SLO binds first" in out.output
    dry = CliRunner().invoke(run, [str(p), "--dry-run", "--seed", "5"], env={"COLUMNS": "400"})
    assert dry.exit_code == 0, dry.output
    assert "order seed 5 (fixed); 4 blocks, 2 server lifetime(s)" in dry.output
    fresh = CliRunner().invoke(run, [str(p), "--dry-run"], env={"COLUMNS": "400"})
    assert "drawn for this dry run" in fresh.output
    bad = CliRunner().invoke(run, [str(p), "--dry-run", "--seed", "-3"])
    assert bad.exit_code != 0 and "--seed" in bad.output
