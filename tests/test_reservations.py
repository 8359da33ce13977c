"""On-Demand Capacity Reservations read at deploy time, before anything is registered, through the same
path as Capacity Blocks (stack.read_existing, judged in planning/existing.py). AWS's answers here are
checked against botocore's models: the Cloud Control request, and the reservation's members and
values as EC2 describes them."""

from __future__ import annotations

import copy
import json
import typing
from datetime import datetime, timedelta, timezone

import botocore.session
import botocore.validate
import pytest

from components.offline import mocks
from components.planning import capacity_window, config, existing
from components.planning.config.fleets import CapacityConfig
from conftest import base_doc, settings_of

SESSION = botocore.session.get_session()
EC2 = SESSION.get_service_model("ec2")
RESERVATION = EC2.shape_for("CapacityReservation")
CR, CR2 = "cr-0123456789abcdef0", "cr-0fedcba9876543210"
GROUP = "arn:aws:resource-groups:us-east-1:123456789012:group/p5en-pool"
LT = "aws:ec2/launchTemplate:LaunchTemplate"


def at(hours: float) -> str:
    return capacity_window.aws_time(datetime.now(timezone.utc) + timedelta(hours=hours))


def odcr(**changes) -> dict:
    """A reservation that fits the fleet below, as Cloud Control gives its properties."""
    return {"InstanceType": "p5en.48xlarge", "AvailabilityZone": "us-east-1a", "State": "active",
            "InstanceMatchCriteria": "targeted", "TotalInstanceCount": 16, "AvailableInstanceCount": 16,
            "EndDateType": "unlimited", "InstancePlatform": "Linux/UNIX", "Tenancy": "default", **changes}


def fleet_doc(nodes_max: int = 16, **capacity) -> dict:
    return base_doc(fleets=[{"name": "h200", "instanceType": "p5en.48xlarge", "availabilityZone": "us-east-1a",
                             "nodes": {"desired": 2, "max": nodes_max},
                             "capacity": {"type": "reservation", **({"reservationId": CR} if "reservationGroupArn" not in capacity else {}),
                                          **capacity}}])


class AWS:
    """AWS's Cloud Control answers for these reservations and groups; records every request after
    botocore's cloudcontrol model has checked it, and checks each answer against EC2's model."""

    def __init__(self, reservations: dict[str, dict], groups: dict[str, list[str]] | None = None):
        self.reservations, self.groups, self.requests = reservations, groups or {}, []
        for props in reservations.values():
            for key, value in props.items():
                assert key in RESERVATION.members, key  # EC2's member names are the schema's
                enum = getattr(RESERVATION.members[key], "enum", None)
                assert not enum or value in enum, (key, value)

    def __call__(self, args: dict) -> dict:
        request = {"TypeName": args["typeName"], "Identifier": args["identifier"]}
        shape = SESSION.get_service_model("cloudcontrol").operation_model("GetResource").input_shape
        report = botocore.validate.ParamValidator().validate(request, shape)
        assert not report.has_errors(), report.generate_report()
        self.requests.append(request)
        if args["typeName"] == existing.RESOURCE_GROUP_TYPE:
            props = {"Name": args["identifier"].rsplit("/", 1)[1], "Resources": self.groups[args["identifier"]]}
        else:
            assert args["typeName"] == existing.RESERVATION_TYPE
            props = self.reservations[args["identifier"]]
        return {"id": args["identifier"], "identifier": args["identifier"], "properties": json.dumps(props)}


def run(doc: dict, aws: AWS) -> mocks.Run:
    settings = settings_of(doc)
    lookups = mocks.stand_in_lookups(settings)
    lookups[mocks.GET_CLOUD_CONTROL] = aws
    return mocks.run(settings, "t", lookups)


def refused(doc: dict, aws: AWS, key: str, message: str) -> str:
    result = run(doc, aws)
    assert result.error is not None, "the run went through"
    assert f"efa-infra:fleets[0].{key}: " in result.error and message in result.error, result.error
    assert "Traceback" not in result.error
    assert result.resources == []  # read and refused before anything is registered
    return result.error


def test_a_fitting_reservation_is_read_before_the_fleet_and_targeted_by_its_template():
    aws = AWS({CR: odcr()})
    result = run(fleet_doc(), aws)
    assert result.error is None, result.error
    assert aws.requests == [{"TypeName": "AWS::EC2::CapacityReservation", "Identifier": CR}]
    lt = result.one(LT).inputs
    assert lt["capacityReservationSpecification"] == {"capacityReservationTarget": {"capacityReservationId": CR}}
    assert result.outputs["capacityReservations"]["h200"][0]["total_instance_count"] == 16


@pytest.mark.parametrize("answer, doc, key, message", [
    ({"InstanceType": "p5.48xlarge"}, fleet_doc(), "instanceType", f"'p5en.48xlarge', but reservation {CR} is for 'p5.48xlarge'"),
    ({"AvailabilityZone": "us-east-1b"}, fleet_doc(), "availabilityZone", f"'us-east-1a', but reservation {CR} is for 'us-east-1b'"),
    ({"State": "expired"}, fleet_doc(), "capacity.reservationId", f"reservation {CR} is expired, not active"),
    ({"State": "pending"}, fleet_doc(), "capacity.reservationId", f"reservation {CR} is pending, not active"),
    ({"EndDateType": "limited", "EndDate": at(24)}, fleet_doc(neededUntil=at(48)), "capacity.neededUntil", f"but reservation {CR} ends at"),
    ({"TotalInstanceCount": 16}, fleet_doc(nodes_max=24), "nodes.max", f"24 nodes, but reservation {CR} holds 16"),
    ({"InstanceMatchCriteria": "open"}, fleet_doc(), "capacity.instanceMatch",
     f"'targeted', but reservation {CR} is 'open' (any matching instance of the account may take its capacity)"),
    ({"InstanceMatchCriteria": "targeted"}, fleet_doc(instanceMatch="open"), "capacity.instanceMatch",
     f"'open', but reservation {CR} is 'targeted' (only launches that name it use it)"),
    ({"TotalInstanceCount": 20}, fleet_doc(instanceCount=16), "capacity.instanceCount", f"16, but reservation {CR} holds 20"),
], ids=["instance-type", "az", "expired", "pending", "ends-too-soon", "too-small", "open-not-targeted", "targeted-not-open",
        "count-differs"])
def test_a_reservation_that_fails_the_fleet_is_refused_at_deploy_time_naming_the_key(answer, doc, key, message):
    refused(doc, AWS({CR: odcr(**answer)}), key, message)


def test_every_problem_of_a_reservation_is_named_at_once():
    error = refused(fleet_doc(nodes_max=24), AWS({CR: odcr(State="cancelled", InstanceMatchCriteria="open")}),
                    "capacity.reservationId", "is cancelled")
    assert "efa-infra:fleets[0].capacity.instanceMatch: " in error
    assert "efa-infra:fleets[0].nodes.max: 24 nodes, but reservation" in error and "holds 0" in error  # a cancelled one holds nothing


def test_a_reservation_that_lasts_as_long_as_needed_passes():
    doc = fleet_doc(neededUntil=at(24))
    assert run(doc, AWS({CR: odcr(EndDateType="limited", EndDate=at(48))})).error is None
    assert run(doc, AWS({CR: odcr()})).error is None  # unlimited


# --- a capacity-reservation resource group ------------------------------------------------


def members(*ids: str) -> list[str]:
    return [f"arn:aws:ec2:us-east-1:123456789012:capacity-reservation/{i}" for i in ids]


def test_a_group_is_targeted_by_the_template_and_each_of_its_reservations_is_read():
    aws = AWS({CR: odcr(TotalInstanceCount=8), CR2: odcr(TotalInstanceCount=8)}, {GROUP: members(CR, CR2)})
    result = run(fleet_doc(reservationGroupArn=GROUP), aws)
    assert result.error is None, result.error
    assert [r["Identifier"] for r in aws.requests] == [GROUP, CR, CR2]
    spec = result.one(LT).inputs["capacityReservationSpecification"]
    assert spec == {"capacityReservationTarget": {"capacityReservationResourceGroupArn": GROUP}}
    # The request the template makes, as EC2 takes it.
    report = botocore.validate.ParamValidator().validate(
        {"LaunchTemplateName": "h200", "LaunchTemplateData": {"CapacityReservationSpecification": {
            "CapacityReservationTarget": {"CapacityReservationResourceGroupArn": GROUP}}}},
        EC2.operation_model("CreateLaunchTemplate").input_shape)
    assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize("second, nodes_max, key, message", [
    (odcr(TotalInstanceCount=8, AvailabilityZone="us-east-1b"), 8, "availabilityZone",
     f"'us-east-1a', but reservation {CR2} (in capacity group {GROUP}) is for 'us-east-1b'"),
    (odcr(TotalInstanceCount=8), 24, "nodes.max", f"24 nodes, but capacity group {GROUP} holds 16"),
    (odcr(TotalInstanceCount=8, State="expired"), 16, "nodes.max", f"16 nodes, but capacity group {GROUP} holds 8"),
], ids=["member-in-other-az", "group-too-small", "expired-member-not-counted"])
def test_a_group_is_checked_member_by_member_and_in_total(second, nodes_max, key, message):
    aws = AWS({CR: odcr(TotalInstanceCount=8), CR2: second}, {GROUP: members(CR, CR2)})
    refused(fleet_doc(nodes_max=nodes_max, reservationGroupArn=GROUP), aws, key, message)


def test_an_empty_group_is_refused():
    refused(fleet_doc(reservationGroupArn=GROUP), AWS({}, {GROUP: []}), "capacity.reservationGroupArn",
            f"capacity group {GROUP} holds no capacity reservation")


# --- offline ------------------------------------------------------------------------------


def test_offline_the_plan_shows_what_it_would_read_as_placeholders():
    result = mocks.run(settings_of(fleet_doc(nodes_max=24)), "t")  # 24 nodes: the offline plan cannot know the size
    assert result.error is None, result.error
    (r,) = result.outputs["capacityReservations"]["h200"]
    assert r["id"] == CR and r["state"] == f"<{CR}.State>" and r["total_instance_count"] == f"<{CR}.TotalInstanceCount>"
    grouped = mocks.run(settings_of(fleet_doc(reservationGroupArn=GROUP)), "t")
    assert grouped.error is None, grouped.error
    assert grouped.outputs["capacityReservations"]["h200"][0]["id"] == "<reservation in p5en-pool.id>"


def test_the_plan_text_lists_the_reservation():
    from components.offline import report
    from components.planning import plan

    doc = fleet_doc()
    result = mocks.run(settings_of(doc), "t")
    text = report.render_text(report.plan_document(plan.build(config.load(copy.deepcopy(doc))), "t", result.resources, [],
                                                   None, result.outputs["capacityReservations"]))
    assert f"reservation       {CR}: <{CR}.InstanceType> in <{CR}.AvailabilityZone>, <{CR}.State>" in text


@pytest.mark.parametrize("capacity, key, message", [
    ({"instanceCount": 8}, "nodes.max", "16 nodes, but the reservation holds 8 instances"),
    ({"reservationGroupArn": GROUP, "reservationId": CR}, "capacity.reservationGroupArn", "not both"),
    ({"neededUntil": at(-1)}, "capacity.neededUntil", "has passed"),
])
def test_what_the_config_states_of_a_reservation_is_checked_offline(capacity, key, message):
    with pytest.raises(config.ConfigError) as err:
        config.load(fleet_doc(**capacity))
    assert any(p.path == f"efa-infra:fleets[0].{key}" and message in p.message for p in err.value.problems), err.value


@pytest.mark.parametrize("capacity, key", [
    ({"type": "on-demand", "instanceMatch": "open"}, "capacity.instanceMatch"),
    ({"type": "on-demand", "instanceCount": 4}, "capacity.instanceCount"),
    ({"type": "capacity-block", "reservationId": CR, "reservationGroupArn": GROUP}, "capacity.reservationGroupArn"),
    ({"type": "capacity-block", "reservationId": CR, "neededUntil": at(5)}, "capacity.neededUntil"),
    ({"type": "reservation"}, "capacity.reservationId"),
])
def test_reservation_keys_elsewhere_are_refused(capacity, key):
    doc = base_doc()
    doc["fleets"][0]["capacity"] = capacity
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert f"efa-infra:fleets[0].{key}" in {p.path for p in err.value.problems}, err.value


def test_instance_match_takes_ec2s_values():
    allowed = typing.get_args(CapacityConfig.model_fields["instance_match"].annotation)
    assert set(allowed) == set(RESERVATION.members["InstanceMatchCriteria"].enum)
