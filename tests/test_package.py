"""The component package: its schema, built by the SDK's own ComponentProvider, carries every config field
with a type; constructing a component through the provider's construct path, from inputs as the engine sends
them, registers what the stack program registers for the same settings; bad arguments register nothing."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pulumi
import pytest
import grpc
from google.protobuf import empty_pb2, struct_pb2
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.server import ProviderServicer
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc
import yaml
from pydantic import BaseModel

from components.offline import mocks
from components.planning import config
from components.planning.config import StackConfig
from components.resources import hosted
from conftest import DEPLOYER, settings_of

ROOT = Path(__file__).resolve().parent.parent
STACK = "dev"


@pytest.fixture(scope="module")
def schema() -> dict:
    provider = ComponentProvider(hosted.COMPONENTS, hosted.NAME, version=hosted.VERSION)
    return json.loads(provider.schema)


def models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in models_in(a)]


def test_the_version_is_the_distributions():
    assert hosted.VERSION == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_every_config_field_is_a_typed_argument(schema):
    """Every field of every model under the hosted sections is a property of the schema type of that model,
    and no property anywhere is untyped (Any)."""
    assert sorted(schema["resources"]) == ["efa-infra:index:EfaCluster", "efa-infra:index:EfaFleet", "efa-infra:index:EfaNetwork",
                                           "efa-infra:index:EfaStack", "efa-infra:index:Job"]
    stack_inputs = schema["resources"]["efa-infra:index:EfaStack"]["inputProperties"]
    assert set(stack_inputs) == {f.alias or n for n, f in StackConfig.model_fields.items()}
    fleet_inputs = schema["resources"]["efa-infra:index:EfaFleet"]["inputProperties"]
    network_inputs = schema["resources"]["efa-infra:index:EfaNetwork"]["inputProperties"]
    cluster_inputs = schema["resources"]["efa-infra:index:EfaCluster"]["inputProperties"]
    for key in ("region", "network", "eks", "fleets", "instanceTypes"):
        field = next(f for n, f in StackConfig.model_fields.items() if (f.alias or n) == key)
        assert network_inputs[key]["description"] == cluster_inputs[key]["description"] == field.description
    assert fleet_inputs["fleet"]["$ref"] == "#/types/efa-infra:index:FleetConfig"
    seen, todo = set(), [m for f in StackConfig.model_fields.values() for m in models_in(f.annotation)
                         if (f.alias or "") in ("network", "eks", "fleets", "instanceTypes", "clusters", "jobs")]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        props = schema["types"][f"efa-infra:index:{model.__name__}"]["properties"]
        keys = {f.alias or n for n, f in model.model_fields.items()}
        assert keys - set(props) == set(), f"{model.__name__}: config fields missing from the package arguments"
        for name, field in model.model_fields.items():
            assert props[field.alias or name]["description"] == field.description
            todo += models_in(field.annotation)
    assert {"FleetConfig", "NetworkConfig", "NodeCounts", "CapacityConfig", "ExistingNetwork", "JobConfig",
            "ClusterConfig", "EksConfig"} <= {m.__name__ for m in seen}
    assert schema["resources"]["efa-infra:index:Job"]["inputProperties"]["job"]["$ref"] == "#/types/efa-infra:index:JobConfig"
    assert "pulumi.json#/Any" not in json.dumps(schema)
    for resource in schema["resources"].values():
        for prop in [*resource["inputProperties"].values(), *resource["properties"].values()]:
            assert "type" in prop or "$ref" in prop


def engine_shaped(values: dict) -> dict:
    """Inputs as the engine hands them to Construct: through a protobuf Struct (every number a float)."""
    struct = struct_pb2.Struct()
    struct.update(values)
    return rpc.deserialize_properties(struct)


def construct(component: str, name: str, inputs: dict, settings: dict, stack: str = STACK,
              options: pulumi.ResourceOptions | None = None) -> mocks.Run:
    """Construct through the provider, under the offline plan's mocks; what it registered, and (as the run's
    outputs) the component's state."""
    provider = ComponentProvider(hosted.COMPONENTS, hosted.NAME, version=hosted.VERSION)
    monocks = mocks.PlanMocks(mocks.stand_in_lookups(settings))
    monitor = mocks.PlanMonitor(monocks)
    pulumi.runtime.set_mocks(monocks, project=mocks.PROJECT, stack=stack, preview=False, monitor=monitor)
    error, state, response = None, {}, {}

    @pulumi.runtime.test
    def program():
        result = provider.construct(name, f"{hosted.NAME}:index:{component}", engine_shaped(inputs), options)
        # The response the engine gets, made by the SDK's own server code: the state and each output's dependencies.
        sent = asyncio.ensure_future(ProviderServicer._construct_response(None, result))
        return pulumi.Output.all(**result.state, sent_=pulumi.Output.from_input(sent)).apply(
            lambda v: (response.update(sent=v.pop("sent_")), state.update(v))) if result.state else None

    try:
        program()
    except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
        error = exc
    names = {urn: n for urn, _, _, n in monitor.order}
    run = mocks.Run([mocks.Registered(typ, n, urn, names.get(parent), parent if parent in names else None,
                                      monocks.inputs[(typ, n)][1], monocks.inputs[(typ, n)][0], urn in monitor.protected)
                     for urn, parent, typ, n in sorted(monitor.order)], state, error=error)
    sent = response.get("sent")
    # Which resources (by name) each output carries as a dependency to the program that uses it.
    run.state_dependencies = {k: sorted(names[u] for u in d.urns) for k, d in sent.stateDependencies.items()} if sent else {}
    return run


def under(run: mocks.Run, parent: str) -> list[tuple[str, str, str]]:
    return sorted((r.type, r.name, json.dumps(r.inputs, sort_keys=True)) for r in run.resources if r.parent == parent)


@pytest.fixture(scope="module")
def program_run():
    settings = config.read_stack_file(ROOT / "stacks" / f"Pulumi.{STACK}.yaml")
    return settings, mocks.run(settings, STACK)


def test_efa_network_registers_what_the_stack_program_does(program_run):
    settings, run = program_run
    doc = config.document_from_settings(settings)
    inputs = {k: doc[k] for k in ("region", "network", "fleets") if k in doc}
    built = construct("EfaNetwork", "efa", inputs, settings)
    assert built.error is None, built.error
    assert len(under(built, "efa")) > 10
    assert under(built, "efa") == under(run, "efa")
    assert [r.type for r in built.resources if r.parent is None] == ["efa-infra:index:EfaNetwork"]


def test_efa_fleet_registers_what_the_stack_program_does(program_run):
    settings, run = program_run
    doc = config.document_from_settings(settings)
    fleet = doc["fleets"][0]
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["networkInterfaces"][0]
    inputs = {"region": doc["region"], "fleet": fleet, "subnetId": template["subnetId"],
              "securityGroupIds": template["securityGroups"]}
    built = construct("EfaFleet", fleet["name"], inputs, settings)
    assert built.error is None, built.error
    assert len(under(built, fleet["name"])) > 5
    assert under(built, fleet["name"]) == under(run, fleet["name"])


def family(run: mocks.Run, keep) -> list[tuple[str, str, str]]:
    """(type, name, inputs) of every resource whose chain of parents (itself first) `keep` accepts."""
    by_urn = {r.urn: r for r in run.resources}

    def chain(r: mocks.Registered) -> list[mocks.Registered]:
        out = [r]
        while r.parent_urn in by_urn:
            r = by_urn[r.parent_urn]
            out.append(r)
        return out
    return sorted((r.type, r.name, json.dumps(r.inputs, sort_keys=True)) for r in run.resources if keep(chain(r)))


CLUSTER_SECTIONS = hosted.SPECS["EfaCluster"][1]


def network_then_cluster(settings: dict, stack: str, name: str = "eks") -> tuple[mocks.Run, mocks.Run]:
    """EfaNetwork and then EfaCluster constructed from a stack's sections, the cluster's ids being the network's
    outputs, as a program in another language passes them."""
    doc = config.document_from_settings(settings)
    sections = {k: doc[k] for k in CLUSTER_SECTIONS if k in doc}
    net = construct("EfaNetwork", "efa", sections, settings, stack=stack)
    assert net.error is None, net.error
    ids = {k: net.outputs[k] for k in ("vpcId", "fleetSubnetIds", "privateSubnetIds")}
    built = construct("EfaCluster", name, {**sections, **ids, "securityGroupId": net.outputs["securityGroupId"]},
                      settings, stack=stack)
    assert built.error is None, built.error
    return net, built


def compute(run: mocks.Run) -> list[tuple[str, str, str]]:
    """What the stack program registers beside its network and its jobs: the cluster, fleets, file systems, Karpenter."""
    return family(run, lambda c: c[-1].type not in ("pulumi:pulumi:Stack", "efa-infra:index:EfaNetwork", "efa-infra:index:Job"))


@pytest.mark.parametrize("stack", ["eks-data", "eks-pinned-ami", "eks-capacity-block", "eks-dra", "prod"])
def test_efa_cluster_registers_what_the_stack_program_does(stack):
    """The cluster with its node groups, the fleets' launch templates and placement groups, their file systems:
    the same resources with the same inputs (a pinned AMI's join data, a Capacity Block's schedules, DRA drivers,
    FSx volumes) as the stack program's, all inside the one component."""
    settings = config.read_stack_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
    run = mocks.run(settings, stack)
    net, built = network_then_cluster(settings, stack)
    assert under(net, "efa") == under(run, "efa")
    assert [r.type for r in built.resources if r.parent is None] == ["efa-infra:index:EfaCluster"]
    assert len(compute(run)) > 15
    assert family(built, lambda c: True) == compute(run)
    assert built.outputs["clusterName"] == run.outputs["clusterName"] == f"{stack}-eks"
    # A program that uses the name (a Job's data role) waits for the cluster itself.
    assert built.state_dependencies["clusterName"] == ["eks-cluster"]
    assert built.state_dependencies["launchTemplateIds"] == sorted(f"{n}-lt" for n in built.outputs["launchTemplateIds"])
    assert built.outputs["launchTemplateIds"] == {n: t["id"] for n, t in run.outputs["launchTemplates"].items()}
    assert built.outputs["placementGroupNames"] == run.outputs["placementGroups"]


def test_pulumis_protect_option_on_a_component_reaches_all_its_resources():
    """The separate components carry no protection of their own; the program's protect option covers them."""
    doc = cluster_doc(fleet_doc("p5", "p5.48xlarge"))
    settings = settings_of(doc)
    _, plain = network_then_cluster(settings, STACK)
    assert not any(r.protect for r in plain.resources)
    net = construct("EfaNetwork", "efa", doc, settings, options=pulumi.ResourceOptions(protect=True))
    assert net.error is None, net.error
    assert len(net.resources) > 10 and all(r.protect for r in net.resources)


def cluster_doc(*fleets: dict, eks: dict | None = None) -> dict:
    return {"region": "us-east-1", "fleets": list(fleets),
            "eks": eks or {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER}}


def fleet_doc(name: str, itype: str, **more) -> dict:
    return {"name": name, "instanceType": itype, "availabilityZone": "us-east-1a", "nodes": {"desired": 0, "max": 8}, **more}


@pytest.mark.parametrize("doc", [
    cluster_doc(fleet_doc("p5", "p5.48xlarge", provisioner="karpenter"), fleet_doc("trn", "trn1.32xlarge")),
    cluster_doc(fleet_doc("p5", "p5.48xlarge"),
                eks={"enabled": True, "existing": {"clusterName": "ml-shared"}, "deployer": {"runsOn": "ci-runner"}}),
], ids=["karpenter-beside-a-node-group", "joins-an-existing-cluster"])
def test_efa_cluster_with_karpenter_or_joining_a_cluster_registers_what_the_stack_program_does(doc):
    settings = settings_of(doc)
    run = mocks.run(settings, STACK)
    assert run.error is None, run.error
    _, built = network_then_cluster(settings, STACK, name="eks")
    assert family(built, lambda c: True) == compute(run)
    kinds = {t for t, _, _ in compute(run)}
    assert ("efa-infra:index:Karpenter" in kinds) == ("karpenter" in json.dumps(doc))
    assert ("aws:eks/accessEntry:AccessEntry" in kinds) == ("existing" in doc["eks"])
    assert built.state_dependencies["clusterName"] == ["eks-node-access" if "existing" in doc["eks"] else "eks-cluster"]


def test_efa_cluster_refuses_what_it_cannot_build_and_registers_nothing():
    doc = cluster_doc(fleet_doc("p5", "p5.48xlarge"), fleet_doc("p4", "p4d.24xlarge"))
    inputs = {**doc, "vpcId": "vpc-0123456789abcdef0", "securityGroupId": "sg-0123456789abcdef0",
              "fleetSubnetIds": {"p5": "subnet-0123456789abcdef0"}, "privateSubnetIds": {"us-east-1a": "subnet-0123456789abcdef0"}}
    built = construct("EfaCluster", "eks", inputs, settings_of(doc))
    message = str(built.error)
    assert "fleetSubnetIds: no id for p4 (it has p5)" in message
    assert "privateSubnetIds: no id for us-east-1b (it has us-east-1a)" in message
    assert built.resources == []
    plain = construct("EfaCluster", "eks", {**inputs, "eks": {"enabled": False}, "fleetSubnetIds": {"p5": "s", "p4": "s"}},
                      settings_of(doc))
    assert "eks.enabled: false, but an EfaCluster is an EKS cluster" in str(plain.error)
    assert plain.resources == []
    bad = construct("EfaCluster", "eks", {**inputs, "eks": {**doc["eks"], "devices": "mig"}}, settings_of(doc))
    assert "eks.devices" in str(bad.error) and "efa-infra:eks" not in str(bad.error)
    assert bad.resources == []


def test_a_job_with_s3_on_an_efa_clusters_fleet_gets_its_data_role_there():
    """A job on an EKS fleet renders its manifests; with S3 access it needs the cluster's name, and then makes
    the same data role and pod identity association as the stack program."""
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.eks-data.yaml")
    run = mocks.run(settings, "eks-data")
    doc = config.document_from_settings(settings)
    job = next(j for j in doc["jobs"] if j.get("s3"))
    inputs = {k: doc[k] for k in ("region", "eks", "fleets") if k in doc} | {"job": {**job, "apply": False}}
    refused = construct("Job", job["name"], inputs, settings, stack="eks-data")
    assert "clusterName: a job with S3 access on an EKS fleet needs its cluster" in str(refused.error)
    assert refused.resources == []
    built = construct("Job", job["name"], {**inputs, "clusterName": run.outputs["clusterName"]}, settings, stack="eks-data")
    assert built.error is None, built.error
    assert "aws:eks/podIdentityAssociation:PodIdentityAssociation" in {t for t, _, _ in under(built, job["name"])}
    assert under(built, job["name"]) == [r for r in under(run, job["name"]) if r[0] != "kubernetes:yaml/v2:ConfigGroup"]
    assert list(yaml.safe_load_all(built.outputs["manifests"])) == run.outputs["jobs"][job["name"]]["manifests"]


@pytest.mark.parametrize("stack", sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml")
                                          for p in (ROOT / "stacks").glob("Pulumi.*.yaml")))
def test_efa_stack_registers_every_resource_of_the_stack_program(stack):
    """The whole stack file as one component's arguments: every resource the stack program registers, with the
    same inputs and protection (prod is protected by its name), and its outputs typed."""
    settings = config.read_stack_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
    run = mocks.run(settings, stack)
    built = construct("EfaStack", "all", config.document_from_settings(settings), settings, stack=stack)
    assert built.error is None, built.error
    assert [r.type for r in built.resources if r.parent is None] == ["efa-infra:index:EfaStack"]

    def resources(r: mocks.Run, top: str) -> list:
        return sorted((x.type, x.name, x.protect, json.dumps(x.inputs, sort_keys=True)) for x in r.resources if x.type != top)
    assert resources(built, "efa-infra:index:EfaStack") == resources(run, "pulumi:pulumi:Stack")
    assert any(r.protect for r in run.resources) == (stack == "prod")
    out, want = built.outputs, run.outputs
    assert (out.get("vpcId"), out.get("clusterName")) == (want.get("vpcId"), want.get("clusterName"))
    assert out["launchTemplateIds"] == {n: t["id"] for n, t in want.get("launchTemplates", {}).items()}
    jobs = want.get("jobs", {})
    assert out["jobRuns"] == {n: j["run"] for n, j in jobs.items() if "run" in j}
    assert {n: list(yaml.safe_load_all(m)) for n, m in out["jobManifests"].items()} == {
        n: j["manifests"] for n, j in jobs.items() if "manifests" in j}
    assert bool(out["jobRuns"] or out["jobManifests"]) == bool(jobs)


def test_efa_stack_refuses_a_bad_stack_file_and_registers_nothing(program_run):
    settings, _ = program_run
    doc = config.document_from_settings(settings)
    doc["fleets"] = [{**doc["fleets"][0], "nodes": {"min": 0, "desired": 3, "max": 2}}]
    built = construct("EfaStack", "all", doc, settings)
    assert "fleets[0].nodes: need min <= desired <= max" in str(built.error)
    assert built.resources == []


def test_a_job_on_ec2_registers_what_the_stack_program_does(program_run):
    settings, run = program_run
    doc = config.document_from_settings(settings)
    job = doc["jobs"][0]
    inputs = {"region": doc["region"], "fleets": doc["fleets"], "job": job,
              "runLogGroup": run.outputs["jobs"][job["name"]]["logGroup"]}
    built = construct("Job", job["name"], inputs, settings)
    assert built.error is None, built.error
    assert [t for t, _, _ in under(built, job["name"])] == ["aws:ssm/document:Document"]
    assert under(built, job["name"]) == under(run, job["name"])
    assert built.outputs["run"] == run.outputs["jobs"][job["name"]]["run"]


def test_a_job_on_a_cluster_renders_the_stack_programs_manifests():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.hyperpod-jobs.yaml")
    run = mocks.run(settings, "hyperpod-jobs")
    doc = config.document_from_settings(settings)
    job = doc["jobs"][0]
    built = construct("Job", job["name"], {"region": doc["region"], "clusters": doc["clusters"], "job": job}, settings,
                      stack="hyperpod-jobs")
    assert built.error is None, built.error
    assert under(built, job["name"]) == under(run, job["name"]) == []
    manifests = run.outputs["jobs"][job["name"]]["manifests"]
    assert list(yaml.safe_load_all(built.outputs["manifests"])) == manifests
    assert [m["kind"] for m in manifests] == ["Service", "Job"]


def test_a_job_refuses_what_the_package_does_not_do(program_run):
    settings, _ = program_run
    doc = config.document_from_settings(settings)
    built = construct("Job", "other", {"region": doc["region"], "fleets": doc["fleets"], "job": doc["jobs"][0]}, settings)
    message = str(built.error)
    assert "job.name: 'smoke', but the resource is named 'other'" in message
    assert "runLogGroup: a job on a plain EC2 fleet needs its fleet's log group" in message
    assert built.resources == []


def test_what_the_package_does_not_make_yet_is_refused_not_left_out():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.ec2-fsx.yaml")
    doc = config.document_from_settings(settings)
    fleet = next(f for f in doc["fleets"] if "fsx" in f)
    built = construct("EfaFleet", fleet["name"], {"region": doc["region"], "fleet": fleet, "subnetId": "subnet-0123456789abcdef0",
                                                  "securityGroupIds": ["sg-0123456789abcdef0"]}, settings, stack="ec2-fsx")
    assert "fleet.fsx: the package's EfaFleet does not make FSx for Lustre file systems; EfaStack builds" in str(built.error)
    assert built.resources == []
    job = next(j for j in doc["jobs"] if j.get("s3"))
    built = construct("Job", job["name"], {"region": doc["region"], "fleets": doc["fleets"], "job": job,
                                           "runLogGroup": "/efa-infra/ec2-fsx/x/run-command"}, settings, stack="ec2-fsx")
    assert "job.s3: on a plain EC2 fleet a job's S3 access goes on the fleet's node role" in str(built.error)
    assert "EfaStack builds the fleet with the job's access" in str(built.error)
    assert built.resources == []


def test_bad_arguments_name_their_keys_and_register_nothing(program_run):
    settings, _ = program_run
    doc = config.document_from_settings(settings)
    fleet = {**doc["fleets"][0], "nodes": {"min": 0, "desired": 3, "max": 2}, "rootVolumeGiB": 5}
    built = construct("EfaFleet", "gpu", {"region": doc["region"], "fleet": fleet, "subnetId": "subnet-0123456789abcdef0",
                                         "securityGroupIds": ["sg-0123456789abcdef0"]}, settings)
    message = str(built.error)
    for key in ("fleet.nodes: need min <= desired <= max", "fleet.rootVolumeGiB"):
        assert key in message, message
    assert "efa-infra:fleets" not in message
    # The component itself is registered by the provider only after its arguments validated: nothing is.
    assert built.resources == []


EXAMPLES = ROOT / "examples"


def check_arguments(value, prop: dict, schema: dict, at: str) -> list[str]:
    """Where `value` (an example's argument) does not fit the schema property `prop`: unknown keys, missing
    required ones, objects where the schema has none. Interpolations (`${...}`, TS identifiers) pass."""
    if "$ref" in prop:
        typ = schema["types"][prop["$ref"].removeprefix("#/types/")]
        if not isinstance(value, dict):
            return [] if isinstance(value, str) else [f"{at}: not an object"]
        return check_object(value, typ["properties"], typ.get("required", []), schema, at)
    if prop.get("type") == "array":
        return [p for i, v in enumerate(value) for p in check_arguments(v, prop["items"], schema, f"{at}[{i}]")] \
            if isinstance(value, list) else []
    if prop.get("type") == "object" and isinstance(value, dict):
        return [p for k, v in value.items() for p in check_arguments(v, prop["additionalProperties"], schema, f"{at}.{k}")]
    return [f"{at}: an object where the schema has {prop.get('type')}"] if isinstance(value, dict) else []


def check_object(value: dict, props: dict, required: list[str], schema: dict, at: str) -> list[str]:
    problems = [f"{at}.{k}: no such argument" for k in value if k not in props]
    problems += [f"{at}.{k}: required" for k in required if k not in value]
    return problems + [p for k, v in value.items() if k in props for p in check_arguments(v, props[k], schema, f"{at}.{k}")]


YAML_EXAMPLES = ["yaml-fleet", "yaml-cluster"]


def test_the_examples_reference_this_release_of_the_package(schema):
    for example in (*YAML_EXAMPLES, "typescript-fleet"):
        project = yaml.safe_load((EXAMPLES / example / "Pulumi.yaml").read_text())
        assert project["packages"][hosted.NAME].endswith(f"/plugin@v{hosted.VERSION}")
        assert f"pulumi package add {project['packages'][hosted.NAME]}" in (EXAMPLES / example / "README.md").read_text()
    assert (ROOT / "plugin" / "PulumiPlugin.yaml").is_file()


@pytest.mark.parametrize("example", YAML_EXAMPLES)
def test_a_yaml_example_uses_the_schemas_arguments_and_outputs(schema, example):
    text = (EXAMPLES / example / "Pulumi.yaml").read_text()
    program = yaml.safe_load(text)
    kinds = {name: r["type"] for name, r in program["resources"].items()}
    ours = {name: kind for name, kind in kinds.items() if kind.startswith(f"{hosted.NAME}:")}
    assert len(ours) >= 2
    for name, kind in ours.items():
        spec = schema["resources"][kind]
        props = program["resources"][name]["properties"]
        assert check_object(props, spec["inputProperties"], spec["requiredInputs"], schema, name) == []
    refs = re.findall(r"\$\{([\w-]+)\.(\w+)", text)
    assert len(refs) >= 5
    for resource, output in refs:
        if resource in ours:
            assert output in schema["resources"][ours[resource]]["properties"], f"{resource}.{output}"


REFERENCE = re.compile(r'\$\{([\w-]+)(?:\.(\w+))?(?:\["([\w-]+)"\])?\}')


def resolve(value, variables: dict, outputs: dict):
    """A YAML program's value with its ${variable} and ${resource.output["key"]} references filled in."""
    if isinstance(value, dict):
        return {k: resolve(v, variables, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, variables, outputs) for v in value]
    if isinstance(value, str) and (m := REFERENCE.fullmatch(value)):
        name, output, key = m.groups()
        found = outputs[name][output] if output else variables[name]
        return found[key] if key else found
    return value


@pytest.mark.parametrize("example", YAML_EXAMPLES)
def test_a_yaml_example_constructs_through_the_provider(example):
    """Each of the example's components, in its order, constructed through the provider from its arguments with
    the program's variables and the earlier components' outputs filled in: valid config, and the ids flow."""
    program = yaml.safe_load((EXAMPLES / example / "Pulumi.yaml").read_text())
    variables, outputs = program.get("variables", {}), {}
    for name, resource in program["resources"].items():
        if not resource["type"].startswith(f"{hosted.NAME}:"):
            continue
        inputs = resolve(resource["properties"], variables, outputs)
        sections = {k: v for k, v in inputs.items() if k in CLUSTER_SECTIONS}
        if "fleet" in inputs:
            sections["fleets"] = [inputs["fleet"]]
        built = construct(resource["type"].rsplit(":", 1)[-1], name, inputs, settings_of(sections), stack="example")
        assert built.error is None, f"{name}: {built.error}"
        assert built.resources
        outputs[name] = built.outputs
    if example == "yaml-cluster":
        assert outputs["cluster"]["launchTemplateIds"] == {"gpu": "<gpu-lt.id>"}
        kinds = [m["kind"] for m in yaml.safe_load_all(outputs["nccl-efa"]["manifests"])]
        assert "MPIJob" in kinds


def object_literal(text: str, start: int) -> str:
    """The balanced {...} at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    raise ValueError("unbalanced braces")


def test_the_typescript_example_uses_the_schemas_arguments_and_outputs(schema):
    text = (EXAMPLES / "typescript-fleet" / "index.ts").read_text()
    assert 'from "@pulumi/efa-infra"' in text
    # Object literals in the example are YAML flow mappings: identifiers read as strings, consts substituted.
    consts = {m.group(1): yaml.safe_load(object_literal(text, m.end() - 1))
              for m in re.finditer(r"const (\w+) = \{", text)}
    made = {}
    for m in re.finditer(r'const (\w+) = new efa\.(\w+)\("[\w-]+", \{', text):
        args = yaml.safe_load(object_literal(text, m.end() - 1))
        args = {k: consts.get(v, v) if isinstance(v, str) else v for k, v in args.items()}
        args = {k: [consts.get(x, x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v for k, v in args.items()}
        spec = schema["resources"][f"{hosted.NAME}:index:{m.group(2)}"]
        assert check_object(args, spec["inputProperties"], spec["requiredInputs"], schema, m.group(1)) == []
        made[m.group(1)] = spec
    assert len(made) == 2
    refs = re.findall(rf"\b({'|'.join(made)})\.(\w+)", text)
    assert len(refs) >= 5
    for resource, output in refs:
        assert output in made[resource]["properties"], f"{resource}.{output}"


def test_the_plugin_serves_the_schema_as_the_engine_asks_for_it(schema):
    """plugin/__main__.py started as the engine starts a provider (its address as the argument): it prints its
    port, and answers GetPluginInfo and GetSchema over gRPC with this release and the same schema."""
    plugin = ROOT / "plugin"
    proc = subprocess.Popen([sys.executable, str(plugin / "__main__.py"), "127.0.0.1:1"], cwd=plugin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            assert stub.GetPluginInfo(empty_pb2.Empty(), timeout=60).version == hosted.VERSION
            served = json.loads(stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60).schema)
    finally:
        proc.kill()
        proc.wait()
    assert served == schema
    assert len(served["resources"]) == len(hosted.COMPONENTS)


def test_an_id_map_known_only_at_deploy_fails_then_by_its_argument():
    """A map of ids that arrives as an output (known only once another resource exists) cannot be checked before
    registering; its missing key fails the lookup, naming the argument and what the map has."""
    pulumi.runtime.set_mocks(mocks.PlanMocks({}), project=mocks.PROJECT, stack=STACK, preview=False)
    late = pulumi.Output.from_input({"p5": "subnet-0123456789abcdef0"})

    @pulumi.runtime.test
    def found():
        return hosted.pick(late, "p5", "fleetSubnetIds").apply(lambda v: (v == "subnet-0123456789abcdef0") or pytest.fail(v))

    found()

    @pulumi.runtime.test
    def missing():
        return hosted.pick(late, "p4", "fleetSubnetIds")

    with pytest.raises(pulumi.InputPropertyError, match=r"fleetSubnetIds: no id for 'p4' \(it has p5\)"):
        missing()
