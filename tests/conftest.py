"""Session fixtures that start real services: redis-server, SeaweedFS (S3), the producer, workers."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sdq import contract
from cli.client import Client
from cli.services import LOCAL_AWS, Stack, free_port
from storage import ResultStore

TEST_BUCKET = "sdq-test"
FAST = {"width": 64, "height": 64, "steps": 4}
"""Small, fast generation parameters for tests."""


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sdq")


def _shared_tmp(workdir: Path) -> Path:
    """The run's temp root: shared by pytest-xdist's workers (built-in models are generated once, race-safe)."""
    return workdir.parent.parent if os.environ.get("PYTEST_XDIST_WORKER") else workdir


@pytest.fixture(scope="session", autouse=True)
def test_env(workdir) -> Iterator[None]:
    """Isolate the model cache and point every child process at the test bucket."""
    models = Path(os.environ.get("SDQ_TEST_MODELS_DIR") or _shared_tmp(workdir) / "models")
    old = dict(os.environ)
    os.environ.update(LOCAL_AWS, SDQ_MODELS_DIR=str(models), SDQ_S3_BUCKET=TEST_BUCKET, HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")
    for var in ("SDQ_REDIS_URL", "SDQ_S3_ENDPOINT_URL", "SDQ_SERVER", "SDQ_API_TOKENS", "SDQ_MODELS"):
        os.environ.pop(var, None)
    yield
    os.environ.clear()
    os.environ.update(old)


@pytest.fixture(scope="session")
def models_dir(test_env) -> Path:
    """The session's model cache with the built-in tiny models generated once."""
    from workers.builtins.registry import BUILDERS, ensure_builtin

    path = Path(os.environ["SDQ_MODELS_DIR"])
    for name in BUILDERS:
        ensure_builtin(path, name)
    return path


@pytest.fixture(scope="session")
def s3_url(workdir, test_env) -> Iterator[str]:
    """A real S3 endpoint on a free loopback port: SeaweedFS (moto where no `weed` wheel exists)."""
    stack = Stack(workdir / "s3")
    (workdir / "s3").mkdir(exist_ok=True)
    url = stack.s3(free_port())
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("AWS_")})
    yield url
    stack.stop()


@pytest.fixture(scope="session")
def store(s3_url) -> ResultStore:
    """The results bucket, as a client sees it."""
    s = ResultStore(TEST_BUCKET, s3_url)
    s.ensure_bucket()
    return s


StackFactory = Callable[..., Stack]


MODULE_STACKS: list[Stack] = []
"""Stacks started while the current test module runs: stopped when it ends (each holds a redis-server, a
producer and its workers, ~0.5-1 GB; kept for the whole session, dozens of modules' stacks filled the
memory of a 2-core CI machine)."""


def _stop(stacks: list[Stack]) -> None:
    if stacks:
        with ThreadPoolExecutor(len(stacks)) as pool:  # each stack's workers finish warm, side by side
            list(pool.map(Stack.stop, stacks))


@pytest.fixture(scope="module", autouse=True)
def module_stacks() -> Iterator[None]:
    """Stop the stacks a test module started, at its end (after its own module fixtures are gone)."""
    yield
    ours = list(MODULE_STACKS)
    MODULE_STACKS.clear()
    _stop(ours)


@pytest.fixture(scope="session")
def stack_factory(workdir, s3_url, models_dir, store) -> Iterator[StackFactory]:
    """Start a private redis-server + producer (sharing the S3 server); workers are added by tests. It is
    stopped when the test module that started it ends (`keep`: when the session ends)."""
    kept: list[Stack] = []

    def make(name: str, env: dict[str, str] | None = None, keep: bool = False) -> Stack:
        d, n = workdir / name, 1
        while d.exists():  # a module started again (pytest-xdist may come back to it) gets fresh state
            n += 1
            d = workdir / f"{name}-{n}"
        d.mkdir()
        st = Stack(d, env={"SDQ_S3_ENDPOINT_URL": s3_url, **(env or {})})
        (kept if keep else MODULE_STACKS).append(st)
        st.redis(free_port())
        st.producer(free_port())
        return st

    yield make
    _stop(kept + MODULE_STACKS)
    MODULE_STACKS.clear()


@pytest.fixture(scope="session")
def stack(stack_factory) -> Stack:
    """The shared stack: redis, producer and one warm CPU worker (1 torch thread)."""
    st = stack_factory("main", keep=True)
    st.worker("w-main", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    return st


@pytest.fixture(scope="session")
def client(stack) -> Client:
    return Client(stack.env["SDQ_SERVER"])


def wait_job(client: Client, job_id: str, timeout: float = 180.0,
             states: tuple[str, ...] = contract.TERMINAL_STATES) -> dict:
    """Poll a job until it reaches one of `states`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.job(job_id)
        if doc["state"] in states:
            return doc
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {doc['state']} after {timeout}s: {doc['counts']}")


def wait_until(check: Callable[[], object], what: str, timeout: float = 120.0):
    """Poll `check()` until it returns something truthy and return that; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)
