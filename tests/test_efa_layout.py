"""The EFA layout against AWS's own data: every EFA-capable type, both layouts."""

from __future__ import annotations

import dataclasses

import pytest

from components.planning import catalog, efa
from components.planning.efa import EfaLayoutError, network_interfaces


def check_layout(raw: dict, interfaces: list[dict]) -> list[str]:
    """The rules AWS enforces on RunInstances, checked against the raw DescribeInstanceTypes entry."""
    net = raw["NetworkInfo"]
    cards = {c["NetworkCardIndex"]: c for c in net["NetworkCards"]}
    errors = []
    slots = {(i["NetworkCardIndex"], i["DeviceIndex"]) for i in interfaces}
    if len(slots) != len(interfaces):
        errors.append("two interfaces share a card and device index")
    primary = [i for i in interfaces if (i["NetworkCardIndex"], i["DeviceIndex"]) == (0, 0)]
    if len(primary) != 1 or primary[0]["InterfaceType"] == "efa-only":
        errors.append("card 0 device 0 must hold an interface that is not efa-only")
    for i in interfaces:
        card = cards.get(i["NetworkCardIndex"])
        if card is None or i["NetworkCardIndex"] >= net["MaximumNetworkCards"]:
            errors.append(f"card {i['NetworkCardIndex']} does not exist")
            continue
        if i["DeviceIndex"] >= card["MaximumNetworkInterfaces"]:
            errors.append(f"device index {i['DeviceIndex']} exceeds card {i['NetworkCardIndex']}'s limit")
        if i["InterfaceType"] not in card.get("InterfaceTypes", ["interface", "efa", "efa-only"]):
            errors.append(f"card {i['NetworkCardIndex']} does not accept {i['InterfaceType']}")
    for index, card in cards.items():
        used = sum(1 for i in interfaces if i["NetworkCardIndex"] == index)
        if used > card["MaximumNetworkInterfaces"]:
            errors.append(f"card {index} holds {used} interfaces, limit {card['MaximumNetworkInterfaces']}")
    efa_count = sum(1 for i in interfaces if i["InterfaceType"] in ("efa", "efa-only"))
    if efa_count != net["EfaInfo"]["MaximumEfaInterfaces"]:
        errors.append(f"{efa_count} EFA devices, the type has {net['EfaInfo']['MaximumEfaInterfaces']}")
    return errors


def efa_types(aws_instance_types):
    return sorted(n for n, t in aws_instance_types.items() if t["NetworkInfo"].get("EfaSupported"))


@pytest.mark.parametrize("layout", efa.LAYOUTS)
def test_every_efa_type_gets_a_valid_full_layout(aws_instance_types, layout):
    names = efa_types(aws_instance_types)
    assert len(names) >= 300, "AWS's data lists about 300 EFA-capable types"
    failures = {}
    for name in names:
        errors = check_layout(aws_instance_types[name], network_interfaces(name, layout))
        if errors:
            failures[name] = errors
    assert failures == {}


def test_the_rule_checker_catches_the_classic_mistakes(aws_instance_types):
    """The checker above must fail the layouts other tools produce, or it proves nothing."""
    b300 = aws_instance_types["p6-b300.48xlarge"]
    efa_on_every_card = [{"NetworkCardIndex": c, "DeviceIndex": 0, "InterfaceType": "efa"} for c in range(17)]
    assert any("does not accept efa" in e for e in check_layout(b300, efa_on_every_card))
    p5 = aws_instance_types["p5.48xlarge"]
    device_2 = [{"NetworkCardIndex": 0, "DeviceIndex": 0, "InterfaceType": "interface"},
                {"NetworkCardIndex": 1, "DeviceIndex": 2, "InterfaceType": "efa-only"}]
    assert any("exceeds" in e for e in check_layout(p5, device_2))
    assert any("EFA devices" in e for e in check_layout(p5, device_2))


def test_ena_primary_is_awss_recommended_layout():
    interfaces = network_interfaces("p5.48xlarge")
    assert interfaces[0] == {"NetworkCardIndex": 0, "DeviceIndex": 0, "InterfaceType": "interface"}
    assert interfaces[1] == {"NetworkCardIndex": 0, "DeviceIndex": 1, "InterfaceType": "efa-only"}
    assert all(i == {"NetworkCardIndex": c, "DeviceIndex": 0, "InterfaceType": "efa-only"}
               for c, i in zip(range(1, 32), interfaces[2:]))
    assert len(interfaces) == 33


def test_efa_primary_is_the_classic_layout():
    interfaces = network_interfaces("p5.48xlarge", "efa-primary")
    assert interfaces[0] == {"NetworkCardIndex": 0, "DeviceIndex": 0, "InterfaceType": "efa"}
    assert [i["DeviceIndex"] for i in interfaces[1:]] == [1] * 31
    assert {i["InterfaceType"] for i in interfaces[1:]} == {"efa-only"}


@pytest.mark.parametrize("layout", efa.LAYOUTS)
def test_p5_node_uses_one_private_ip(layout):
    itype = catalog.get("p5.48xlarge")
    summary = efa.summarize(itype, efa.interfaces(itype, layout))
    assert (summary.private_ips, summary.efa_devices, summary.efa_bandwidth_gbps) == (1, 32, 3200)


def test_p6_b300_skips_card_0_which_takes_no_efa():
    for layout in efa.LAYOUTS:
        interfaces = network_interfaces("p6-b300.48xlarge", layout)
        assert interfaces[0] == {"NetworkCardIndex": 0, "DeviceIndex": 0, "InterfaceType": "interface"}
        assert [i["NetworkCardIndex"] for i in interfaces if i["InterfaceType"] != "interface"] == list(range(1, 17))
    itype = catalog.get("p6-b300.48xlarge")
    summary = efa.summarize(itype, efa.interfaces(itype))
    # The instance states 6400 Gigabit; card 0 (350) is ENA only, the 16 EFA cards carry 400 each.
    assert (summary.efa_bandwidth_gbps, summary.network_bandwidth_gbps) == (6400, 6400)


@pytest.mark.parametrize("name,attached,why", [
    # cards 4 x 400 = 1600, instance "400 Gigabit": AWS quotes 400 Gbps for g6e.48xlarge
    ("g6e.48xlarge", 400, "its cards' baselines add up to 1600, more than the instance carries at once"),
    ("g6e.24xlarge", 200, "add up to 400, more than"),
    ("c6in.32xlarge", 200, "add up to 400, more than"),
    ("hpc6id.32xlarge", 200, "add up to 400, more than"),
    # cards 8 x 200 = 1600, instance "3200 Gigabit", AWS's figure for B200 instances' EFA
    ("p6-b200.48xlarge", 3200, "add up to only 1600, so the stated figure is shared out"),
    ("p5.48xlarge", 3200, None),  # 32 x 100 = "3200 Gigabit": the cards agree
    ("p5en.48xlarge", 3200, None),
])
def test_bandwidth_is_the_instances_stated_figure(name, attached, why):
    itype = catalog.get(name)
    summary = efa.summarize(itype, efa.interfaces(itype))
    assert summary.efa_bandwidth_gbps == attached == summary.network_bandwidth_gbps
    assert (itype.bandwidth_note is None) if why is None else (why in itype.bandwidth_note)


def test_every_efa_type_attaches_no_more_than_the_instance_states():
    for itype in catalog.Catalog().efa_types():
        assert itype.stated_bandwidth_gbps, itype.name  # every EFA type states a figure in Gigabit
        for layout in efa.LAYOUTS:
            summary = efa.summarize(itype, efa.interfaces(itype, layout))
            assert 0 < summary.efa_bandwidth_gbps <= summary.network_bandwidth_gbps == itype.stated_bandwidth_gbps, (itype.name, layout)


@pytest.mark.parametrize("performance,gbps", [("400 Gigabit", 400), ("16x 200 Gigabit", 3200), ("Up to 25 Gigabit", 25),
                                              ("133.33 Gigabit", 133.33), ("High", None), (None, None)])
def test_stated_network_performance_is_read_as_gbps(performance, gbps):
    itype = dataclasses.replace(catalog.get("p5.48xlarge"), network_performance=performance)
    assert itype.stated_bandwidth_gbps == gbps
    if gbps is None:  # a declared type states nothing: its cards' sum, said so
        assert itype.network_bandwidth_gbps == 3200 and itype.bandwidth_note.startswith("the instance states no figure")


def test_two_cards_but_one_efa_device():
    interfaces = network_interfaces("i7ie.48xlarge")
    assert [i["InterfaceType"] for i in interfaces] == ["interface", "efa-only"]
    assert all(i["NetworkCardIndex"] == 0 for i in interfaces)


def test_single_slot_cards_make_the_primary_the_efa_device():
    # hpc6id.32xlarge: two cards of one interface each and two EFA devices.
    assert network_interfaces("hpc6id.32xlarge") == [
        {"NetworkCardIndex": 0, "DeviceIndex": 0, "InterfaceType": "efa"},
        {"NetworkCardIndex": 1, "DeviceIndex": 0, "InterfaceType": "efa-only"},
    ]


def test_errors_for_types_without_efa_unknown_types_and_layouts():
    with pytest.raises(EfaLayoutError, match="m5.large does not support EFA"):
        network_interfaces("m5.large")
    with pytest.raises(catalog.UnknownInstanceType, match="p5.48xlarge"):
        network_interfaces("p5.48xlarg")
    with pytest.raises(EfaLayoutError, match="valid: ena-primary, efa-primary"):
        network_interfaces("p5.48xlarge", "efa-everywhere")


def test_shipped_catalog_matches_awss_data(aws_instance_types):
    """The data file is what tools/refresh_catalog.py makes of AWS's data: regenerate it if this fails."""
    from tools.refresh_catalog import slim

    shipped = catalog._shipped()[0]
    assert set(shipped) == set(aws_instance_types)
    assert all(shipped[n] == slim(t) for n, t in aws_instance_types.items())
