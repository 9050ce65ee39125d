"""Install pins and floors: the GPU image gets a torch that transformers 5 accepts, every install
uses the tested versions (constraints.txt), and setup.cfg's floors are what the code needs."""
from __future__ import annotations

import configparser
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

NEEDED = {
    "kombu": ("5.7", "producer/planning/jobs.py publishes with `Producer.batch`; sdq/celery_app.py sets the Redis "
                     "transport's `unacked_restore_interval` (both new in kombu 5.7)"),
    "celery": ("5.7", "celery 5.7 is the release that requires kombu 5.7"),
    "diffusers": ("0.42", "`dtype=` in from_pretrained/from_single_file/from_pipe, the tested release"),
    "transformers": ("5.10", "CLIPTokenizer(vocab=dict, merges=list) and the `*ImageProcessorPil` classes "
                             "of the built-in models (transformers 5 image-processor backends)"),
    "torch": ("2.6", "transformers 5 disables torch < 2.6"),
    "accelerate": ("1.1", "transformers 5's own floor; model CPU offload hooks"),
}
"""Package -> (the lowest version the code needs, why)."""


def pins() -> dict[str, str]:
    """constraints.txt as {normalised name: version}."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.lower().replace("_", "-")] = version
    return out


def requirements() -> dict[str, Requirement]:
    """setup.cfg's install_requires plus the worker and gpu extras, by package name."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in ("worker", "gpu"):
        lines += cfg["options.extras_require"][extra].splitlines()
    out: dict[str, Requirement] = {}
    for line in filter(None, (x.strip() for x in lines)):
        req = Requirement(line)
        out.setdefault(req.name.lower(), req)
    return out


def floor(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def gpu_torch_pin() -> str:
    text = (ROOT / "deploy" / "Dockerfile.gpu").read_text()
    found = re.findall(r"pip install[^\n]*\btorch==([\w.+]+)", text)
    assert len(found) == 1, f"Dockerfile.gpu must install exactly one pinned torch, found {found}"
    return found[0]


def test_the_gpu_images_torch_satisfies_the_installed_transformers():
    from transformers.dependency_versions_table import deps

    pin = gpu_torch_pin()
    minimum = Requirement(deps["torch"])  # e.g. "torch>=2.6"
    assert minimum.specifier.contains(pin), f"Dockerfile.gpu installs torch {pin}; transformers needs {minimum}"
    assert pin == pins()["torch"], "the GPU image must install the tested torch of constraints.txt"
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "deploy" / "Dockerfile.gpu").read_text(), re.M).group(1)
    assert not base.startswith("pytorch/pytorch"), f"{base}: its bundled torch would be kept by pip"


def test_every_install_uses_the_tested_versions():
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / "deploy" / dockerfile).read_text()
        installs = re.findall(r"pip install [^\n&]*", text)
        assert installs and all("-c constraints.txt" in line for line in installs), (dockerfile, installs)
        assert "COPY constraints.txt" in text
    make = (ROOT / "Makefile").read_text()
    installs = [line for line in make.splitlines() if "$(PIP) install" in line and "--upgrade pip" not in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    # this test run itself is on the pinned versions
    pinned = pins()
    for name in ("torch", "diffusers", "transformers", "accelerate", "celery", "kombu", "redis", "boto3"):
        installed = metadata.version(name).split("+")[0]
        assert installed == pinned[name], f"{name} {installed} installed, {pinned[name]} pinned"


def test_setup_cfg_floors_are_what_the_code_needs():
    reqs = requirements()
    for name, (needed, why) in NEEDED.items():
        assert name in reqs, f"setup.cfg does not require {name} ({why})"
        low = floor(reqs[name])
        assert low is not None and low >= Version(needed), f"{reqs[name]}: needs >= {needed}: {why}"
    # the tested versions satisfy the floors
    pinned = pins()
    for name, req in reqs.items():
        if name in pinned:
            assert req.specifier.contains(pinned[name]), f"{req} excludes the tested {name} {pinned[name]}"
    # the floors are not below what the installed libraries themselves require of each other
    from diffusers.dependency_versions_table import deps as diffusers_deps
    from transformers.dependency_versions_table import deps as transformers_deps

    for table in (transformers_deps, diffusers_deps):
        for name in ("torch", "accelerate"):
            if name in table:
                low = floor(Requirement(table[name]))
                assert low is None or floor(reqs[name]) >= low, (name, table[name], str(reqs[name]))


def test_the_features_behind_the_floors_are_used_and_present():
    import kombu

    assert hasattr(kombu.Producer, "batch")
    assert "producer.batch(" in (ROOT / "producer" / "planning" / "jobs.py").read_text()
    assert "unacked_restore_interval" in (ROOT / "sdq" / "celery_app.py").read_text()
