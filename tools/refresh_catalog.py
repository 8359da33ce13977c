"""Regenerate components/data/instance_types.json from AWS's DescribeInstanceTypes.

With AWS credentials (or --live) it asks a real account; otherwise it asks
moto's bundled copy of the same data through boto3 under `mock_aws`, so the
file can be refreshed offline. Only the facts the project uses are kept, one
instance type per line so that a refresh shows as a readable diff.

    python tools/refresh_catalog.py            # moto's copy (offline)
    python tools/refresh_catalog.py --live     # a real account (credentials needed)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import boto3
import botocore.session

OUT = Path(__file__).resolve().parent.parent / "components" / "data" / "instance_types.json"


def _accelerators(raw: dict) -> dict | None:
    for gpu in raw.get("GpuInfo", {}).get("Gpus", []):
        return {
            "kind": "gpu",
            "manufacturer": gpu.get("Manufacturer", ""),
            "name": gpu["Name"],
            "count": gpu["Count"],
            "memoryMiB": gpu.get("MemoryInfo", {}).get("SizeInMiB", 0),
        }
    for dev in raw.get("NeuronInfo", {}).get("NeuronDevices", []):
        return {
            "kind": "neuron",
            "manufacturer": "AWS",
            "name": dev["Name"],
            "count": dev["Count"],
            "memoryMiB": dev.get("MemoryInfo", {}).get("SizeInMiB", 0),
            "coresPerDevice": dev.get("CoreInfo", {}).get("Count", 0),
        }
    return None


def slim(raw: dict) -> dict:
    """The facts the catalog keeps for one DescribeInstanceTypes entry."""
    net = raw["NetworkInfo"]
    entry = {
        "architectures": raw["ProcessorInfo"]["SupportedArchitectures"],
        "vcpus": raw["VCpuInfo"]["DefaultVCpus"],
        "memoryMiB": raw["MemoryInfo"]["SizeInMiB"],
        "maximumNetworkInterfaces": net["MaximumNetworkInterfaces"],
        "ipv4AddressesPerInterface": net["Ipv4AddressesPerInterface"],
        # The instance's own figure; the cards' figures can disagree with it (catalog.bandwidth_basis).
        "networkPerformance": net.get("NetworkPerformance", ""),
        "maximumEfaInterfaces": net.get("EfaInfo", {}).get("MaximumEfaInterfaces", 0)
        if net.get("EfaSupported")
        else 0,
        "networkCards": [
            {
                "index": card["NetworkCardIndex"],
                "maximumNetworkInterfaces": card["MaximumNetworkInterfaces"],
                # Older copies of the data lack InterfaceTypes: every card then took all three.
                "interfaceTypes": card.get("InterfaceTypes", ["interface", "efa", "efa-only"]),
                "baselineBandwidthGbps": card.get("BaselineBandwidthInGbps", 0.0),
            }
            for card in net.get("NetworkCards", [])
        ],
        "placementStrategies": raw.get("PlacementGroupInfo", {}).get("SupportedStrategies", []),
    }
    accel = _accelerators(raw)
    if accel:
        entry["accelerator"] = accel
    return entry


def describe_all(client) -> list[dict]:
    out: list[dict] = []
    for page in client.get_paginator("describe_instance_types").paginate():
        out.extend(page["InstanceTypes"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="ask a real AWS account")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    if args.live:
        raw = describe_all(boto3.client("ec2", region_name=args.region))
        source = f"DescribeInstanceTypes, AWS account, {args.region}"
    else:
        import moto

        with moto.mock_aws():
            raw = describe_all(boto3.client("ec2", region_name=args.region))
        source = f"DescribeInstanceTypes, moto {moto.__version__} bundled copy"
    regions = sorted(
        {
            r
            for partition in ("aws", "aws-cn", "aws-us-gov")
            for r in botocore.session.get_session().get_available_regions("ec2", partition)
        }
    )
    types = {t["InstanceType"]: slim(t) for t in sorted(raw, key=lambda t: t["InstanceType"])}
    lines = ['{"source": ' + json.dumps(source) + ",", '"regions": ' + json.dumps(regions) + ",", '"types": {']
    items = [json.dumps(name) + ": " + json.dumps(entry, separators=(",", ":")) for name, entry in types.items()]
    lines.append(",\n".join(items))
    lines.append("}}")
    OUT.write_text("\n".join(lines) + "\n")
    efa = sum(1 for t in types.values() if t["maximumEfaInterfaces"])
    print(f"wrote {OUT}: {len(types)} types, {efa} with EFA, {len(regions)} regions ({source})")


if __name__ == "__main__":
    main()
