"""Live mode as a newcomer meets it (issue 14): ONE `cotenant up` of examples/cpu-demo.yaml for
the whole module, driven with the official openai client; the examples it prints run as
printed; a tenant killed with SIGKILL is restarted alone and answers; Ctrl-C leaves nothing.
That `cotenant up` is the installed one (the session's wheel, ``installed_cotenant``, run from
a folder outside the repository, as test_installed.py runs it): these tests are also the
installed package's vLLM and encoder starts.

The tests share the one `up` process and run in file order (the kill and the Ctrl-C last).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e import session as e2e_session
from tests.e2e.session import Live
from tests.e2e.test_campaign import survivors
from tests.e2e.test_up import pgids_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).parents[2]
DECODERS = ("llama-a", "llama-b")
ENCODER = "minilm"


def listener_pid(port: int) -> int:
    """The process listening on a port: the tenant's server (the leader of its group)."""
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return int(c.pid)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """`cotenant up` as installed from the wheel, run from a folder outside the repository
    (begun in the background after collection: ``tests.e2e.session``)."""
    pytest.importorskip("vllm")
    lv: Live = e2e_session.take("live")
    assert set(lv.ports) == {*DECODERS, ENCODER}  # what these tests drive
    try:
        lv.wait_for("Serving", timeout=420)
        yield lv
    finally:
        lv.stop(grace_s=30)


def test_the_table_and_the_examples_work_as_printed(live: Live) -> None:
    out = live.out()
    for name in live.ports:
        assert live.url(name) in out, out  # never folded
    lines = [ln.strip() for ln in out.splitlines()]
    curls = [ln for ln in lines if ln.startswith("curl ")]
    pys = [ln for ln in lines if ln.startswith("python -c ")]
    assert len(curls) == len(pys) == 3
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine")
    for cmd in curls + pys:
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0 and r.stdout.strip(), (cmd, r.stdout, r.stderr)
        if cmd.startswith("curl") and "/v1/embeddings" in cmd:
            assert '"embedding"' in r.stdout, r.stdout
        elif cmd.startswith("curl"):
            assert '"choices"' in r.stdout, r.stdout
        elif "embeddings" in cmd:
            assert r.stdout.strip() == "384"


def test_models_list(live: Live) -> None:
    for name in live.ports:
        assert [m.id for m in live.client(name).models.list()] == [name]


def _prompts(name: str, n: int) -> tuple[str, int, list[int]]:
    """A text of exactly n tokens, the tokens the server counts for it (with the special
    tokens its tokenizer adds, a BOS), and n token ids (taken as they are)."""
    from transformers import AutoTokenizer

    from servers.presets import build_preset
    from workloads.prompts import PromptSource

    model = {"llama-a": "tiny-llama", "llama-b": "tiny-llama-wide"}[name]
    path = build_preset(model)
    src = PromptSource(path, prompt_seed=n, tenant=name)
    text = src.text(n)
    counted = len(AutoTokenizer.from_pretrained(str(path))(text)["input_ids"])
    assert counted - n in (0, 1), (text, counted)
    return text, counted, src.token_ids(n)


@pytest.mark.parametrize("name", DECODERS)
def test_completions_of_short_prompts_text_and_ids_streamed_and_not(live: Live, name: str) -> None:
    c = live.client(name)
    pid = listener_pid(live.ports[name])
    for n in (1, 4, 8):
        text, counted, ids = _prompts(name, n)
        for prompt, tokens in ((text, counted), (ids, n)):
            what = f"{name}: {n}-token prompt as {'text' if prompt is text else 'ids'}"
            r = c.completions.create(model=name, prompt=prompt, max_tokens=8,
                                     extra_body={"ignore_eos": True})
            assert r.usage is not None, what
            assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (tokens, 8), what
            chunks = list(c.completions.create(model=name, prompt=prompt, max_tokens=8,
                                               stream=True,
                                               stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True}))
            usage = chunks[-1].usage
            assert usage is not None and usage.completion_tokens == 8, what
            assert sum(1 for ch in chunks if ch.choices) >= 1, what
    # the issue's own request, word for word
    r = c.completions.create(model=name, prompt="hello", max_tokens=8)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert listener_pid(live.ports[name]) == pid  # the same server: nothing died


def test_embeddings_on_the_encoder(live: Live) -> None:
    r = live.client(ENCODER).embeddings.create(model=ENCODER, input=["hello", "a longer one"])
    assert [len(d.embedding) for d in r.data] == [384, 384]
    assert r.usage.prompt_tokens > 0


def test_a_request_of_the_wrong_kind_is_a_4xx_and_the_tenant_stays_up(live: Live) -> None:
    pids = {n: listener_pid(p) for n, p in live.ports.items()}
    for name in DECODERS:
        with pytest.raises(openai.APIStatusError) as e:
            live.client(name).embeddings.create(model=name, input=["hello"])
        assert 400 <= e.value.status_code < 500, (name, e.value.status_code)
        r = live.client(name).completions.create(model=name, prompt="hello", max_tokens=4)
        assert r.usage is not None and r.usage.completion_tokens >= 1
    with pytest.raises(openai.APIStatusError) as e:
        live.client(ENCODER).completions.create(model=ENCODER, prompt="hello", max_tokens=4)
    assert 400 <= e.value.status_code < 500, e.value.status_code
    assert len(live.client(ENCODER).embeddings.create(model=ENCODER, input=["x"]).data) == 1
    assert {n: listener_pid(p) for n, p in live.ports.items()} == pids
    assert "died" not in live.out() and "exited" not in live.out()


def test_a_tenant_killed_with_sigkill_comes_back_alone_and_answers(live: Live) -> None:
    victim = "llama-a"
    others = {n: listener_pid(p) for n, p in live.ports.items() if n != victim}
    since = len(live.lines)
    os.kill(listener_pid(live.ports[victim]), signal.SIGKILL)
    live.wait_for(f"tenant {victim} exited", timeout=30, since=since)
    live.wait_for(f"{victim} is back at {live.url(victim)}", timeout=400, since=since)
    live.wait_for(f"tenants up (after: {victim})", timeout=30, since=since)  # the table again
    after = live.out(since)
    assert live.url(victim) in after.split(f"{victim} is back")[-1]
    r = live.client(victim).completions.create(model=victim, prompt="hello", max_tokens=8)
    assert r.usage is not None and r.usage.completion_tokens >= 1
    # the others stayed up all along: the same processes, and they answer
    assert {n: listener_pid(live.ports[n]) for n in others} == others
    r2 = live.client("llama-b").completions.create(model="llama-b", prompt="hi", max_tokens=2)
    assert r2.usage is not None
    assert "left down" not in after and live.proc.poll() is None


def test_ctrl_c_stops_every_tenant(live: Live) -> None:
    pgids = pgids_of(live.logs)
    assert len(pgids) >= 3
    live.proc.send_signal(signal.SIGINT)
    try:
        live.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`cotenant up` did not stop:\n{live.out()[-3000:]}") from None
    assert live.proc.returncode in (0, 130), live.out()[-3000:]
    assert not survivors(pgids)
    for port in live.ports.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
