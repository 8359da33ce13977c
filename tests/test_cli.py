"""The CLI and the stack file as a new user meets them: strict reading, AZs from data, exit codes a
pipeline can trust, the stack's name, readable output and help."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from components.__main__ import parser
from components.offline import exit_codes
from components.planning import config
from conftest import ROOT, base_doc, settings_of

README = (ROOT / "README.md").read_text()
DEV = ROOT / "stacks" / "Pulumi.dev.yaml"


def cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def problems_of(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as err:
        config.load_settings(config.loading.parse_stack_file(text, "t.yaml"), "t.yaml")
    return [str(p) for p in err.value.problems]


def stack_text(doc: dict) -> str:
    return yaml.safe_dump({"config": settings_of(doc)}, sort_keys=False)


# --- strict reading ----------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["network", "fleets"])
def test_a_section_without_the_namespace_is_refused_not_dropped(section):
    doc = settings_of(base_doc(network={"vpcCidr": "10.9.0.0/16"}))
    doc[section] = doc.pop(f"efa-infra:{section}")
    assert problems_of(yaml.safe_dump({"config": doc})) == [
        f"{section}: a key without a namespace, which the program does not read; write it as 'efa-infra:{section}'"]


def test_unknown_keys_of_ours_are_refused_and_other_namespaces_pass():
    doc = {**settings_of(base_doc()), "efa-infra:fleet": [], "aws:profile": "team", "pulumi:tags": {"a": "b"},
           "kubernetes:context": "x"}
    (only,) = problems_of(yaml.safe_dump({"config": doc}))
    assert only.startswith("efa-infra:fleet: unknown key; did you mean 'efa-infra:fleets'?")


def test_the_strict_reading_follows_the_models():
    """A key the models gain is known at once: the sections come from StackConfig, not from a list."""
    from components.planning.config.errors import section_names
    from components.planning.config.stack import StackConfig

    assert set(section_names()) == {f.alias or n for n, f in StackConfig.model_fields.items()} - {"region"}


def test_a_key_given_twice_is_refused_with_both_lines():
    text = stack_text(base_doc()).replace("    nodes:\n      desired: 2\n",
                                          "    nodes:\n      desired: 4\n    nodes:\n      desired: 1\n")
    lines = text.splitlines()
    first, second = (i + 1 for i, line in enumerate(lines) if line == "    nodes:")
    assert problems_of(text) == [f"efa-infra:fleets[0].nodes: given twice in one mapping, on lines {first} and {second}; "
                                 "YAML would keep only the last: keep one"]


def test_yaml_syntax_errors_are_told_by_line_and_column_in_plain_words():
    (tab,) = problems_of("config:\n  aws:region: us-east-1\n\tefa-infra:fleets: []\n")
    assert tab == "line 3, column 1: not valid YAML: a tab character: YAML indents with spaces only; replace the tab with spaces"
    (colon,) = problems_of("config:\n  aws:region: us-east-1 efa-infra:protect: true\n")
    assert colon.startswith("line 2, column ") and "a ':' where no key can start" in colon
    for problem in (tab, colon):
        assert "<unicode string>" not in problem and "scanning" not in problem


# --- AZs from data ---------------------------------------------------------------------------


def test_an_az_the_region_lacks_is_refused_at_the_key_written_with_the_valid_list():
    doc = base_doc(region="us-west-2")
    doc["fleets"][0]["availabilityZone"] = "us-west-2e"  # the pattern fits; us-west-2 has a to d
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert [str(p) for p in err.value.problems] == [
        "efa-infra:fleets[0].availabilityZone: 'us-west-2e' is not an AZ of us-west-2; its AZs: us-west-2a, us-west-2b, "
        f"us-west-2c, us-west-2d (AWS's list as of {json.loads((ROOT / 'components/data/availability_zones.json').read_text())['date']})"]
    doc["fleets"][0]["availabilityZone"] = "us-west-2z"
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert [p.path for p in err.value.problems] == ["efa-infra:fleets[0].availabilityZone"]  # not network.subnetCidrs


def test_the_az_data_names_its_source_and_date():
    data = json.loads((ROOT / "components/data/availability_zones.json").read_text())
    assert "DescribeAvailabilityZones" in data["source"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"])
    assert data["regions"]["us-east-1"] == [f"us-east-1{c}" for c in "abcdef"]


# --- errors: root cause first, the project's words --------------------------------------------


def test_a_wrong_region_comes_first_and_alone():
    doc = base_doc(region="us-east-9", network={"availabilityZones": ["us-east-9b"]})
    doc["fleets"][0]["availabilityZone"] = "us-east-9a"
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert [p.path for p in err.value.problems] == ["aws:region"]


def test_jobs_on_a_duplicated_fleet_name_are_not_checked_against_the_duplicate():
    doc = base_doc(jobs=[{"name": "j", "fleet": "gpu", "launcher": "torchrun", "command": ["t.py"], "nodes": 2}])
    doc["fleets"].append({"name": "gpu", "instanceType": "m5.large", "availabilityZone": "us-east-1a",
                          "nodes": {"desired": 1}, "efa": False})
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert [str(p) for p in err.value.problems] == ["efa-infra:fleets[1].name: 'gpu' is already the name of fleets[0]"]


def test_messages_are_the_projects_not_pydantics():
    doc = base_doc()
    doc["fleets"][0].update(capacity={"type": "reservation", "reservationId": "cr-zz"}, rootVolumeGiB="big", efaLayout="x")
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    text = str(err.value)
    for pydantic_words in ("String should match pattern", "Input should be", "valid integer"):
        assert pydantic_words not in text
    assert "efa-infra:fleets[0].capacity.reservationId: not of the form this key takes: The capacity reservation" in text
    assert "efa-infra:fleets[0].rootVolumeGiB: must be a whole number (got 'big')" in text
    assert "efa-infra:fleets[0].efaLayout: must be one of 'ena-primary', 'efa-primary' (got 'x')" in text


def test_the_efa_sizes_hint_lists_every_size_in_natural_order():
    doc = base_doc()
    doc["fleets"][0]["instanceType"] = "g5.xlarge"
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert "(EFA sizes of g5: g5.8xlarge, g5.12xlarge, g5.16xlarge, g5.24xlarge, g5.48xlarge)" in str(err.value)


# --- exit codes -----------------------------------------------------------------------------------


def test_a_mistyped_flag_is_a_usage_error_not_diffs_blocked_code():
    result = cli("plan", "--stack", "dev", "--jsn")
    assert result.returncode == exit_codes.USAGE == 2 and "unrecognized arguments: --jsn" in result.stderr
    assert exit_codes.GATE not in (exit_codes.OK, exit_codes.INVALID, exit_codes.USAGE, exit_codes.TOOL)


def test_a_closed_pipe_is_a_quiet_success_under_pipefail():
    done = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m components plan --stack p5-ec2 --json | head -c 10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, '{\n  "stack', "")


def test_every_help_names_its_exit_codes_and_the_readme_table_matches():
    table = re.search(r"<!-- exit-codes:.*?-->\n(.*?)<!-- /exit-codes -->", README, re.S).group(1).strip().splitlines()[2:]
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in table]
    rows = {int(code): (meaning, commands.split(", ")) for code, meaning, commands in cells}
    assert rows == {code: (meaning.strip(), [c for c, codes in exit_codes.BY_COMMAND.items() if code in codes])
                    for code, meaning in exit_codes.MEANING.items()}
    for command, codes in exit_codes.BY_COMMAND.items():
        out = " ".join(cli(command, "--help").stdout.split())  # argparse wraps lines: compare the words
        listed = re.findall(r"(?:^| )(\d) (?=\S)", out.split("exit codes:")[1])
        assert [int(c) for c in listed] == list(codes), command
        for code in codes:
            assert " ".join(exit_codes.MEANING[code].split()) in out, (command, code)


def test_every_command_and_option_has_help():
    top = parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert {c.dest for c in sub._choices_actions} == set(exit_codes.BY_COMMAND)
    for c in sub._choices_actions:
        assert c.help, c.dest
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions if not a.help]
    assert missing == []
    assert all(p.description for p in sub.choices.values())


def test_an_unknown_base_ref_is_a_tool_error():
    result = cli("diff", "--stack", "dev", "--base-ref", "no-such-ref")
    assert result.returncode == exit_codes.TOOL and "'no-such-ref' is not a commit" in result.stderr


# --- the stack's name ---------------------------------------------------------------------------


def test_config_takes_its_name_from_the_file_or_stack_name_never_a_guess(tmp_path):
    copy = tmp_path / "new.yaml"
    shutil.copy(ROOT / "stacks" / "Pulumi.prod.yaml", copy)
    unnamed = cli("plan", "--config", copy, "--json")
    assert unnamed.returncode == exit_codes.USAGE and "--stack-name" in unnamed.stderr and unnamed.stdout == ""
    named = json.loads(cli("plan", "--config", copy, "--stack-name", "prod", "--json").stdout)
    vpc = next(r for r in named["resources"] if r["type"] == "aws:ec2/vpc:Vpc")
    assert named["stack"] == "prod" and vpc["protect"] is True  # prod's protection default follows the name
    assert cli("plan", "--stack", "dev", "--stack-name", "prod").returncode == exit_codes.USAGE


def test_diffs_base_keeps_the_name_of_the_stack_it_stands_for(tmp_path):
    copy = tmp_path / "new.yaml"
    shutil.copy(ROOT / "stacks" / "Pulumi.prod.yaml", copy)
    result = cli("diff", "--config", copy, "--base", ROOT / "stacks" / "Pulumi.prod.yaml", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["stack"] == "prod" and doc["summary"]["create"] == doc["summary"]["delete"] == 0
    clash = cli("diff", "--config", ROOT / "stacks" / "Pulumi.dev.yaml", "--base", ROOT / "stacks" / "Pulumi.prod.yaml")
    assert clash.returncode == exit_codes.USAGE and "name different stacks (dev, prod)" in clash.stderr


# --- output -------------------------------------------------------------------------------------


def test_render_removes_its_stale_files_and_only_those(tmp_path):
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())
    stack = tmp_path / "Pulumi.prod.yaml"
    stack.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    first = cli("render", "--config", stack, "--out", out)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == [".efa-infra-render", "nccl-efa.yaml", "pretrain-v2.yaml", "pretrain.yaml"]
    doc["config"]["efa-infra:jobs"] = [j for j in doc["config"]["efa-infra:jobs"] if j["name"] != "nccl-efa"]
    stack.write_text(yaml.safe_dump(doc))
    again = cli("render", "--config", stack, "--out", out)
    assert again.returncode == 0 and f"removed {out / 'nccl-efa.yaml'}" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == [".efa-infra-render", "pretrain-v2.yaml", "pretrain.yaml"]
    (out / "mine.yaml").write_text("kind: ConfigMap\n")
    refused = cli("render", "--config", stack, "--out", out)
    assert refused.returncode == exit_codes.TOOL and "holds files render did not write (mine.yaml)" in refused.stderr
    assert (out / "mine.yaml").exists() and (out / "pretrain.yaml").exists()


def test_rendered_manifests_have_no_anchors(tmp_path):
    result = cli("render", "--stack", "prod", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "pretrain.yaml").read_text()
    assert not re.search(r"[&*]id\d+", text)
    (job,) = [d for d in yaml.safe_load_all(text) if d["kind"] == "PyTorchJob"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Worker"]["template"] == specs["Master"]["template"]  # written out in full at both places


def whole_floats(value) -> list:
    if isinstance(value, float):
        return [value] if value.is_integer() else []
    if isinstance(value, dict):
        return [f for v in value.values() for f in whole_floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in whole_floats(v)]
    return []


def test_plan_json_keeps_integers_integral_and_inputs_whole():
    doc = json.loads(cli("plan", "--stack", "p5-ec2", "--json").stdout)
    assert whole_floats([r["inputs"] for r in doc["resources"]]) == []
    asg = next(r for r in doc["resources"] if r["type"] == "aws:autoscaling/group:Group")
    assert isinstance(asg["inputs"]["maxSize"], int)
    ssm = next(r for r in doc["resources"] if r["type"] == "aws:ssm/document:Document")
    assert len(ssm["inputs"]["content"]) > 5000  # whole in JSON


def test_the_text_plan_summarises_long_inputs_by_kind_size_and_hash():
    out = cli("plan", "--stack", "p5-ec2").stdout
    assert max(len(line) for line in out.splitlines()) < 1000
    assert re.search(r"content=<JSON document, \d{4,} bytes, sha256 [0-9a-f]{12}>", out)
    assert re.search(r"userData=<base64, \d+ bytes, sha256 [0-9a-f]{12}>", out)


def test_types_has_a_header_natural_order_and_a_filter():
    lines = cli("types", "g5").stdout.splitlines()
    assert lines[0].split()[:2] == ["type", "cards"]
    assert [line.split()[0] for line in lines[1:]] == ["g5.8xlarge", "g5.12xlarge", "g5.16xlarge", "g5.24xlarge", "g5.48xlarge"]
    assert [line.split()[0] for line in cli("types", "p5*.48xlarge").stdout.splitlines()[1:]] == \
        ["p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge"]


# --- validate -------------------------------------------------------------------------------------


def test_validate_takes_stack_names_and_json(tmp_path):
    result = cli("validate", "--stack", "dev", "--stack", "prod", "--json")
    assert result.returncode == 0, result.stdout
    doc = json.loads(result.stdout)
    assert (doc["valid"], doc["total"]) == (2, 2) and [s["file"].split("/")[-1] for s in doc["stacks"]] == \
        ["Pulumi.dev.yaml", "Pulumi.prod.yaml"]
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config:\n  aws:region: us-east-1\n  fleets: []\n")
    invalid = json.loads(cli("validate", bad, "--json").stdout)
    assert invalid["stacks"][0]["problems"] == [
        {"key": "fleets", "message": "a key without a namespace, which the program does not read; write it as 'efa-infra:fleets'"}]
    assert cli("validate", "--stack", "nope").returncode == exit_codes.INVALID


# --- the README ---------------------------------------------------------------------------------


def test_the_readmes_example_stack_is_the_file_it_names():
    for name, block in re.findall(r"\(this is `([^`]+)`\):\n\n```yaml\n(.*?)```", README, re.S):
        assert block == (ROOT / name).read_text(), name
    assert re.findall(r"\(this is `([^`]+)`\)", README) == ["stacks/Pulumi.dev.yaml"]
