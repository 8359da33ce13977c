"""Print the component package's Pulumi schema, as the plugin serves it (the SDK's ComponentProvider infers it
from components/resources/hosted.py), after checking it: every component's inputs and outputs typed (no Any).

    python tools/package_schema.py > efa-infra.schema.json

`pulumi package add efa-infra.schema.json` makes an SDK from the file alone (the plugin still runs the components).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def schema() -> dict:
    from pulumi.provider.experimental.component import ComponentProvider

    from components.resources import hosted

    return json.loads(ComponentProvider(hosted.COMPONENTS, hosted.NAME, version=hosted.VERSION).schema)


def main() -> int:
    doc = schema()
    untyped = [f"{name}.{prop}" for name, res in {**doc["resources"], **doc["types"]}.items()
               for prop, spec in {**res.get("inputProperties", {}), **res.get("properties", {})}.items()
               if "pulumi.json#/Any" in json.dumps(spec)]
    if untyped:
        print(f"untyped properties: {', '.join(untyped)}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
