"""Shared test helpers."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def aws_instance_types() -> dict[str, dict]:
    """AWS's DescribeInstanceTypes answer, from moto's bundled copy through boto3."""
    import boto3
    import moto

    with moto.mock_aws():
        client = boto3.client("ec2", region_name="us-east-1")
        types = [t for page in client.get_paginator("describe_instance_types").paginate() for t in page["InstanceTypes"]]
    return {t["InstanceType"]: t for t in types}


def base_doc(**overrides) -> dict:
    """A valid config document (one small EFA fleet) to break in one place."""
    doc = {
        "region": "us-east-1",
        "fleets": [{"name": "gpu", "instanceType": "g6.8xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}],
    }
    doc.update(overrides)
    return doc


# How `pulumi up` reaches the API server of a cluster a test stack creates (eks.deployer): a runner whose
# addresses the public endpoint admits, as the example stacks do.
DEPLOYER = {"publicAccessCidrs": ["203.0.113.0/28"], "deployer": {"runsOn": "ci-runner", "cidrs": ["203.0.113.0/28"]}}


def settings_of(doc: dict) -> dict:
    """A config document as stack-file settings (`ns:key`)."""
    return {("aws:region" if k == "region" else f"efa-infra:{k}"): v for k, v in doc.items()}


def strict(schema):
    """The schema with unknown fields refused where the API server would prune them (a structural CRD schema
    drops fields it does not list unless x-kubernetes-preserve-unknown-fields says otherwise): a misspelt key
    fails here instead of vanishing on apply."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def stand_in_devices(efa: int, gpus: int = 0) -> str:
    """sh (as root, in a private mount namespace) that puts a fresh /dev in place with `efa` EFA device
    nodes (/dev/infiniband/uverbsN, char 231:192+N as the kernel numbers them) and `gpus` NVIDIA ones
    (/dev/nvidiaN, char 195:N; /dev/nvidiactl beside them is not a GPU), plus what programs need of /dev."""
    nodes = [f"mknod -m 666 /dev/{name} c {major} {minor}"
             for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8), ("urandom", 1, 9))]
    nodes += [f"mknod /dev/infiniband/uverbs{i} c 231 {192 + i}" for i in range(efa)]
    nodes += [f"mknod /dev/nvidia{i} c 195 {i}" for i in range(gpus)] + ["mknod /dev/nvidiactl c 195 255"]
    return " && ".join([
        "mount -t tmpfs -o mode=755 efa-infra-dev /dev", "mkdir /dev/infiniband /dev/shm /dev/pts", *nodes,
        "mount -t tmpfs none /dev/shm", "mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts",
        "ln -s pts/ptmx /dev/ptmx", "ln -s /proc/self/fd /dev/fd",
        *(f"ln -s /proc/self/fd/{n} /dev/{f}" for n, f in enumerate(("stdin", "stdout", "stderr"))),
    ])
# Every example stack file, by name.
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def stack_settings(name: str) -> dict:
    from components.planning import config

    return config.read_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml")


@functools.lru_cache(maxsize=None)
def stack_run(name: str):
    """What the program registers for an example stack, run once per session (it must run clean)."""
    from components.offline import mocks

    run = mocks.run(stack_settings(name), name)
    assert run.error is None, run.error
    return run


def register(settings: dict, stack: str) -> list:
    """What the program registers for these settings under the mocks (it must run clean)."""
    from components.offline import mocks

    run = mocks.run(settings, stack)
    assert run.error is None, run.error
    return run.resources
