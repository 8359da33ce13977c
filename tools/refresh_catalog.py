"""Regenerate components/data/instance_types.json from AWS's DescribeInstanceTypes, and
components/data/availability_zones.json from DescribeAvailabilityZones in every region.

With AWS credentials (or --live) it asks a real account; otherwise it asks
moto's bundled copy of the same data through boto3 under `mock_aws`, so the
files can be refreshed offline. Only the facts the project uses are kept, one
instance type (one region) per line so that a refresh shows as a readable diff.

    python tools/refresh_catalog.py            # moto's copy (offline)
    python tools/refresh_catalog.py --live     # a real account (credentials needed)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.session

OUT = Path(__file__).resolve().parent.parent / "components" / "data" / "instance_types.json"
ZONES_OUT = OUT.with_name("availability_zones.json")


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


def describe_zones(client) -> list[str]:
    """The names of the region's Availability Zones (not Local or Wavelength Zones). Their ids are left out:
    in older regions an account's names map to ids of its own (components/planning/zones.py)."""
    zones = client.describe_availability_zones(Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])
    return sorted(z["ZoneName"] for z in zones["AvailabilityZones"])


def write_zones(zones: dict[str, list[str]], source: str) -> None:
    from datetime import date

    lines = ['{"source": ' + json.dumps(source) + ",", '"date": ' + json.dumps(date.today().isoformat()) + ",", '"regions": {']
    lines.append(",\n".join(json.dumps(r) + ": " + json.dumps(z, separators=(",", ":")) for r, z in sorted(zones.items()) if z))
    lines.append("}}")
    ZONES_OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {ZONES_OUT}: the AZs of {sum(bool(z) for z in zones.values())} regions ({source})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="ask a real AWS account")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    regions = sorted(
        {
            r
            for partition in ("aws", "aws-cn", "aws-us-gov")
            for r in botocore.session.get_session().get_available_regions("ec2", partition)
        }
    )
    if args.live:
        raw = describe_all(boto3.client("ec2", region_name=args.region))
        source = f"DescribeInstanceTypes, AWS account, {args.region}"
        # Regions the account has not opted into (or another partition's) refuse the call: they keep no list.
        zones = {}
        for region in regions:
            try:
                zones[region] = describe_zones(boto3.client("ec2", region_name=region))
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                zones[region] = []
        zone_source = "DescribeAvailabilityZones, AWS account, each region it reaches"
    else:
        import moto

        with moto.mock_aws():
            raw = describe_all(boto3.client("ec2", region_name=args.region))
            zones = {r: describe_zones(boto3.client("ec2", region_name=r)) for r in regions}
        source = f"DescribeInstanceTypes, moto {moto.__version__} bundled copy"
        zone_source = (f"DescribeAvailabilityZones, moto {moto.__version__} bundled copy "
                       "(moto/ec2/models/availability_zones_and_regions.py; regions it has no list for get zones a to c)")
    write_zones(zones, zone_source)
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
