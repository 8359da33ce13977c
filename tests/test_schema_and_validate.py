"""The stack config schema for editors, and `python -m components validate` for CI."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from components.planning import config
from conftest import ROOT, base_doc, settings_of

SCHEMA = ROOT / "schema" / "stack-config.schema.json"
STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))


def test_committed_schema_matches_the_models():
    assert json.loads(SCHEMA.read_text()) == config.stack_file_schema(), "run python tools/gen_schema.py"


def test_every_config_field_has_a_description():
    schema = config.stack_file_schema()
    missing = [f"{name}.{prop}" for name, d in schema["$defs"].items() for prop, p in d.get("properties", {}).items()
               if not p.get("description")]
    missing += [k for k, p in schema["properties"]["config"]["properties"].items() if not p.get("description")]
    assert missing == []


@pytest.mark.parametrize("path", STACK_FILES, ids=[p.name for p in STACK_FILES])
def test_example_stacks_validate_against_the_schema_and_point_editors_at_it(path):
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(yaml.safe_load(path.read_text()))
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../schema/stack-config.schema.json"


def test_schema_rejects_unknown_keys_and_bad_values():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    doc = {"config": settings_of(base_doc())}
    assert validator.is_valid(doc)
    assert not validator.is_valid({"config": {**doc["config"], "efa-infra:fleet": []}})
    bad = json.loads(json.dumps(doc))
    bad["config"]["efa-infra:fleets"][0]["efaLayout"] = "efa-everywhere"
    assert not validator.is_valid(bad)


def validate(*files) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components", "validate", *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_validate_checks_every_stack():
    result = validate()
    assert result.returncode == 0, result.stdout
    assert f"{len(STACK_FILES)} of {len(STACK_FILES)} stack configs valid" in result.stdout


def test_validate_names_each_problem_by_stack_and_key(tmp_path):
    good = tmp_path / "Pulumi.good.yaml"
    good.write_text(yaml.safe_dump({"config": settings_of(base_doc())}))
    bad = tmp_path / "Pulumi.bad.yaml"
    doc = base_doc()
    doc["fleets"][0]["instanceType"] = "m5.large"
    doc["jobs"] = [{"name": "x", "fleet": "nope", "launcher": "torchrun", "command": ["t.py"]}]
    bad.write_text(yaml.safe_dump({"config": settings_of(doc)}))
    result = validate(good, bad)
    assert result.returncode == 1
    assert "ok      Pulumi.good.yaml" in result.stdout
    assert "invalid Pulumi.bad.yaml" in result.stdout
    assert "efa-infra:fleets[0].efa: m5.large has no EFA device" in result.stdout
    assert "efa-infra:jobs[0].fleet: no fleet or cluster named 'nope'" in result.stdout
    assert "1 of 2 stack configs valid" in result.stdout and "Traceback" not in result.stderr
