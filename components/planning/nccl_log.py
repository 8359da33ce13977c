"""Which transport NCCL used, from its own log lines (NCCL_DEBUG=INFO, subsystems INIT and NET).

The verdict rests on one line only: the one where NCCL names the network it
uses (`Using network <name>`, or per channel `... via NET/<name>/...` where that
is all the log has), read together with what aws-ofi-nccl logged before it (its
version, the libfabric provider and the NICs it found). NCCL's plugin-loading
texts change from version to version and some are printed on healthy runs
(NCCL 2.21 logs `No plugin found (ofi)` before it loads libnccl-net-ofi.so for
`NCCL_NET_PLUGIN=ofi`), so they are only context for the message.

Every marker, with the NCCL and aws-ofi-nccl tags and files it was read from,
is data (`data/nccl_log_lines.json`): `transport()` reads with it here
(nccl-report), and `preflight.transport_check()` renders the same markers into
the shell that watches a job's output. Pure: no Pulumi import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "nccl_log_lines.json").read_text())

NETWORK: str = _DATA["network"]["marker"]
CHANNEL: str = _DATA["channel"]["marker"]
FALLBACK: tuple[str, ...] = tuple(f["marker"] for f in _DATA["fallback"])
PLUGIN_VERSION: tuple[str, ...] = tuple(m["marker"] for m in _DATA["pluginVersion"])
PROVIDER: tuple[str, ...] = tuple(m["marker"] for m in _DATA["provider"])
NICS: str = _DATA["nics"]["marker"]
# A network whose name has one of these is the OFI plugin; any other (Socket, IB) is not EFA.
OFI_NAMES: tuple[str, ...] = tuple(_DATA["ofiNames"]["names"])
# What is wrong with a run meant for EFA (also rendered into the shell check).
MSG_NOT_OFI = "NCCL uses {network}, not the aws-ofi-nccl plugin: the run goes over TCP, not EFA"
MSG_PROVIDER = "NCCL uses the aws-ofi-nccl plugin with provider {provider}, not efa"
MSG_NICS = "the aws-ofi-nccl plugin found {nics} EFA NICs, expected {expected}"
# Context, added to a verdict (or to the note that there was none) when NCCL said it fell back.
FALLBACK_CONTEXT = " (NCCL logged that it loaded no net plugin)"


@dataclass(frozen=True)
class Transport:
    network: str | None  # NCCL's name of the network it used; None when the log has no such line
    plugin_version: str | None  # aws-ofi-nccl's version, when it initialized
    provider: str | None  # the libfabric provider the plugin selected
    nics: int | None  # NICs the plugin found
    fallback: bool = False  # NCCL printed its no-plugin text before naming the network (context only)

    @property
    def ofi(self) -> bool:
        return self.network is not None and any(n in self.network for n in OFI_NAMES)

    @property
    def efa(self) -> bool:
        return self.ofi and self.provider == "efa"


def _after(line: str, markers: tuple[str, ...]) -> str | None:
    for m in markers:
        at = line.find(m)
        if at >= 0:
            return line[at + len(m):]
    return None


def transport(text: str) -> Transport:
    """The first network NCCL names, with what was logged before it; later lines do not change it."""
    network = version = provider = None
    nics = None
    fallback = False
    for line in text.splitlines():
        if (rest := _after(line, PLUGIN_VERSION)) is not None:
            version = rest.split(" ", 1)[0].strip() or None
        elif (rest := _after(line, PROVIDER)) is not None:
            provider = rest.replace(",", " ").split(" ", 1)[0] or None
            if (found := _after(line, (NICS,))) is not None and found.split(" ", 1)[0].isdigit():
                nics = int(found.split(" ", 1)[0])
        elif _after(line, FALLBACK) is not None:
            fallback = True
        elif (rest := _after(line, (NETWORK,))) is not None:
            network = rest.strip()
        elif (rest := _after(line, (CHANNEL,))) is not None:
            network = rest.split("/", 1)[0]
        if network:
            break
    return Transport(network or None, version, provider, nics, fallback)


def problem(t: Transport, expected_nics: int) -> str | None:
    """What is wrong with the transport of a run meant for EFA, or None. A log with no network line says nothing."""
    if t.network is None:
        return None
    if not t.ofi:
        return MSG_NOT_OFI.format(network=t.network) + (FALLBACK_CONTEXT if t.fallback else "")
    if t.provider is not None and t.provider != "efa":
        return MSG_PROVIDER.format(provider=t.provider)
    if t.nics is not None and t.nics < expected_nics:
        return MSG_NICS.format(nics=t.nics, expected=expected_nics)
    return None
