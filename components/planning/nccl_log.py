"""Which transport NCCL used, from its own log lines (NCCL_DEBUG=INFO, subsystems INIT and NET).

The lines this reads, and who prints them:
- NCCL: `NET/Plugin ... No plugin found` or `... Using internal network plugin`
  when it loaded no net plugin; `Using network <name>` (INIT|NET), and per channel
  `... via NET/<name>/<dev>...` (transport/net.cc). The name is the net
  plugin's (aws-ofi-nccl: `Libfabric` in its NVIDIA interface, `AWS Libfabric`
  in its Neuron one and in older releases; src/nccl_ofi_interface_*.cpp) or a
  built-in transport's (`Socket`, `IB`).
- aws-ofi-nccl (src/nccl_ofi_net.cpp at 2daf7d30, INIT|NET, every line
  prefixed `NET/OFI `): `Initializing aws-ofi-nccl <version>` (line 188;
  `Using aws-ofi-nccl <version>` in 1.6) and
  `Selected provider is <prov>, fabric is <fabric> (found <n> nics)` (line 644;
  `Selected Provider is <prov> (found <n> nics)` before).

The markers below are the one definition of these lines: `transport()` reads
them here (nccl-report), and `preflight.transport_check()` renders the same
markers into the shell that watches a job's output. Pure: no Pulumi import.
"""

from __future__ import annotations

from dataclasses import dataclass

NETWORK = "Using network "
CHANNEL = " via NET/"
PLUGIN_VERSION = ("NET/OFI Initializing aws-ofi-nccl ", "NET/OFI Using aws-ofi-nccl ")
PROVIDER = ("NET/OFI Selected provider is ", "NET/OFI Selected Provider is ")
NICS = "(found "
# NCCL found no net plugin and fell back to its own transports (Socket on EFA nodes):
# "NET/Plugin : No plugin found (libnccl-net.so)" (NCCL 2.4 to 2.18), "NET/Plugin: Could not
# find: libnccl-net.so. Using internal network plugin." (2.19 and later).
NO_PLUGIN = ("No plugin found", "Using internal network plugin")
NO_PLUGIN_NETWORK = "its internal network (no net plugin loaded)"
# A network whose name has one of these is the OFI plugin; any other (Socket, IB) is not EFA.
OFI_NAMES = ("Libfabric", "OFI")
# What is wrong with a run meant for EFA (also rendered into the shell check).
MSG_NOT_OFI = "NCCL uses {network}, not the aws-ofi-nccl plugin: the run goes over TCP, not EFA"
MSG_PROVIDER = "NCCL uses the aws-ofi-nccl plugin with provider {provider}, not efa"
MSG_NICS = "the aws-ofi-nccl plugin found {nics} EFA NICs, expected {expected}"


@dataclass(frozen=True)
class Transport:
    network: str | None  # NCCL's name of the network it used; None when the log has no such line
    plugin_version: str | None  # aws-ofi-nccl's version, when it initialized
    provider: str | None  # the libfabric provider the plugin selected
    nics: int | None  # NICs the plugin found

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
    """The first network NCCL names, with what the plugin logged before it; later lines do not change it."""
    network = version = provider = None
    nics = None
    for line in text.splitlines():
        if (rest := _after(line, PLUGIN_VERSION)) is not None:
            version = rest.split(" ", 1)[0].strip() or None
        elif (rest := _after(line, PROVIDER)) is not None:
            provider = rest.replace(",", " ").split(" ", 1)[0] or None
            if (found := _after(line, (NICS,))) is not None and found.split(" ", 1)[0].isdigit():
                nics = int(found.split(" ", 1)[0])
        elif _after(line, NO_PLUGIN) is not None:
            network = NO_PLUGIN_NETWORK
        elif (rest := _after(line, (NETWORK,))) is not None:
            network = rest.strip()
        elif (rest := _after(line, (CHANNEL,))) is not None:
            network = rest.split("/", 1)[0]
        if network:
            break
    return Transport(network or None, version, provider, nics)


def problem(t: Transport, expected_nics: int) -> str | None:
    """What is wrong with the transport of a run meant for EFA, or None. A log with no network line says nothing."""
    if t.network is None:
        return None
    if not t.ofi:
        return MSG_NOT_OFI.format(network=t.network)
    if t.provider is not None and t.provider != "efa":
        return MSG_PROVIDER.format(provider=t.provider)
    if t.nics is not None and t.nics < expected_nics:
        return MSG_NICS.format(nics=t.nics, expected=expected_nics)
    return None
