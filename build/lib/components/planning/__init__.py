"""Pure planning: the stack config, the instance catalog, the EFA layout, the address plan, the plan
itself and the launch renderers. No module here imports Pulumi (tests/test_layers.py checks it)."""
