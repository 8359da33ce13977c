"""The EFA interface layout: which interface goes on which network card.

Decided here and nowhere else. Launch templates, the offline plan, subnet
sizing and the policy pack all read it from `network_interfaces()`.
Pure: no Pulumi import.

Layouts (AWS EC2 User Guide, "Maximize network bandwidth on Amazon EC2
instances with multiple network cards"):

- ``ena-primary`` (default, AWS's current recommendation): a plain ENA
  interface at card 0 device 0; every EFA device is ``efa-only`` (no IP
  address), at device 1 on card 0 and device 0 on the other cards. One
  private IP per node.
- ``efa-primary`` (the classic layout): ``efa`` (EFA with ENA) at card 0
  device 0, ``efa-only`` at device 1 on the other EFA cards.

Both respect what the data says of each card: only accepted interface types,
no device index at or over the card's interface limit, no more EFA devices
than ``MaximumEfaInterfaces``. Where card 0 holds a single interface and the
other cards cannot carry every EFA device (hpc6id.32xlarge), ``ena-primary``
makes the primary itself ``efa``: still one IP, and all devices attached. A card that takes no EFA is skipped (p6-b300's
card 0), so such a type gets a plain primary whatever the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Catalog, InstanceType

LAYOUTS = ("ena-primary", "efa-primary")
EFA_TYPES = ("efa", "efa-only")


class EfaLayoutError(ValueError):
    pass


@dataclass(frozen=True)
class Interface:
    network_card_index: int
    device_index: int
    interface_type: str  # EC2 API value: interface, efa, efa-only

    def as_api(self) -> dict:
        return {
            "NetworkCardIndex": self.network_card_index,
            "DeviceIndex": self.device_index,
            "InterfaceType": self.interface_type,
        }

    @property
    def is_efa(self) -> bool:
        return self.interface_type in EFA_TYPES

    @property
    def has_ip(self) -> bool:
        """efa-only devices get no IP address: SRD runs over MAC addresses."""
        return self.interface_type != "efa-only"


def _resolve(instance_type: str | InstanceType, catalog: Catalog | None) -> InstanceType:
    if isinstance(instance_type, InstanceType):
        return instance_type
    return (catalog or Catalog()).get(instance_type)


def _efa_device_type(card, preferred: str) -> str:
    if preferred in card.interface_types:
        return preferred
    return next(t for t in EFA_TYPES if t in card.interface_types)


def interfaces(instance_type: str | InstanceType, layout: str = "ena-primary", catalog: Catalog | None = None) -> list[Interface]:
    """The interfaces for every EFA device of the type, in the given layout."""
    if layout not in LAYOUTS:
        raise EfaLayoutError(f"unknown EFA layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    itype = _resolve(instance_type, catalog)
    if not itype.efa_supported:
        raise EfaLayoutError(f"{itype.name} does not support EFA")
    cards = sorted(itype.network_cards, key=lambda c: c.index)
    if not cards or cards[0].index != 0:
        raise EfaLayoutError(f"{itype.name}: the data lists no network card 0")
    budget = itype.maximum_efa_interfaces
    card0 = cards[0]
    out: list[Interface] = []

    secondary_efa_cards = sum(1 for c in cards[1:] if c.accepts_efa)
    # ena-primary keeps card 0's EFA device beside the primary; where card 0
    # holds one interface only (hpc6id.32xlarge) and the other cards cannot
    # carry every device, the primary itself must be the EFA device.
    primary_is_efa = card0.accepts_efa and (
        layout == "efa-primary"
        or (card0.maximum_network_interfaces == 1 and secondary_efa_cards < budget)
    )
    if primary_is_efa:
        out.append(Interface(0, 0, _efa_device_type(card0, "efa")))
        budget -= 1
    else:
        out.append(Interface(0, 0, "interface"))
        if layout == "ena-primary" and card0.accepts_efa and card0.maximum_network_interfaces > 1:
            out.append(Interface(0, 1, _efa_device_type(card0, "efa-only")))
            budget -= 1

    for card in cards[1:]:
        if budget == 0:
            break
        if not card.accepts_efa:
            continue
        # The classic layout leaves device 0 of secondary cards free (device 1),
        # but only where the card has room for a second interface.
        device = 1 if layout == "efa-primary" and card.maximum_network_interfaces > 1 else 0
        out.append(Interface(card.index, device, _efa_device_type(card, "efa-only")))
        budget -= 1

    if budget:
        raise EfaLayoutError(
            f"{itype.name}: layout {layout!r} placed {itype.maximum_efa_interfaces - budget} "
            f"of {itype.maximum_efa_interfaces} EFA devices"
        )
    return out


def node_interfaces(itype: InstanceType, layout: str, efa_enabled: bool) -> list[Interface]:
    """A fleet node's interfaces: every EFA device in the layout, or the primary alone with EFA off."""
    return interfaces(itype, layout) if efa_enabled else [Interface(0, 0, "interface")]


def network_interfaces(instance_type: str | InstanceType, layout: str = "ena-primary", catalog: Catalog | None = None) -> list[dict]:
    """The EFA layout in EC2 API terms: a list of
    ``{"NetworkCardIndex", "DeviceIndex", "InterfaceType"}`` dicts, primary first.

    Raises EfaLayoutError for a type without EFA or an unknown layout, and
    catalog.UnknownInstanceType for a type the catalog does not know.
    """
    return [i.as_api() for i in interfaces(instance_type, layout, catalog)]


@dataclass(frozen=True)
class LayoutSummary:
    efa_devices: int
    private_ips: int
    efa_bandwidth_gbps: float
    network_bandwidth_gbps: float
    card0_free_slots: int  # interfaces left on card 0 for the VPC CNI's extra ENIs


def summarize(itype: InstanceType, interfaces: list[Interface]) -> LayoutSummary:
    efa_cards = {i.network_card_index for i in interfaces if i.is_efa}
    used_on_card0 = sum(1 for i in interfaces if i.network_card_index == 0)
    return LayoutSummary(
        efa_devices=sum(1 for i in interfaces if i.is_efa),
        private_ips=sum(1 for i in interfaces if i.has_ip),
        efa_bandwidth_gbps=itype.cards_share_gbps(efa_cards),
        network_bandwidth_gbps=itype.network_bandwidth_gbps,
        card0_free_slots=itype.card(0).maximum_network_interfaces - used_on_card0,
    )
