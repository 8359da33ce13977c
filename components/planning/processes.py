"""Processes a job starts per node by default: one per GPU, or one per logical NeuronCore as the Neuron SDK
counts them in its default configuration (data/neuron_cores.json, with its sources). Pure: no Pulumi import."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .catalog import Accelerator

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "neuron_cores.json"


@lru_cache(maxsize=1)
def _neuron_devices() -> dict[str, dict]:
    return json.loads(DATA_FILE.read_text())["devices"]


def per_node(accel: Accelerator | None) -> int:
    """One process per accelerator the frameworks see: GPUs, logical NeuronCores; 1 without accelerators.

    A Neuron device the data does not know or keeps per device (Inferentia), or a declared type without its core
    count, gets one per device.
    """
    if accel is None:
        return 1
    device = _neuron_devices().get(accel.name) if accel.kind == "neuron" else None
    grouping = device and device["physicalCoresPerLogical"]
    if not grouping or not accel.cores_per_device:
        return accel.count
    return accel.count * accel.cores_per_device // grouping
