"""Each region's Availability Zones, from data (`data/availability_zones.json`, written by
tools/refresh_catalog.py from DescribeAvailabilityZones, with its source and date). Pure: no Pulumi import.

AZ names only, not AZ ids (use1-az4): in its older regions AWS maps the names to physical zones
separately for each account (accounts created before November 2025; AWS docs, "AZ IDs",
docs.aws.amazon.com/global-infrastructure/latest/regions/az-ids.html), so only the account can say
which name an id is."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "availability_zones.json"


@lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads(DATA_FILE.read_text())


def zones(region: str) -> tuple[str, ...] | None:
    """The region's AZ names; None when the data has no list for it."""
    listed = _data()["regions"].get(region)
    return tuple(listed) if listed else None


def refusal(az: str, region: str) -> str | None:
    """Why `az` is not an AZ of `region` (None: it is, or the data cannot say)."""
    known = zones(region)
    if known is None or az in known:
        return None
    return f"{az!r} is not an AZ of {region}; its AZs: {', '.join(known)} (AWS's list as of {_data()['date']})"
