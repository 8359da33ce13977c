"""The efa-infra policy pack: `pulumi preview --policy-pack policy`. Policies in `policies.py`."""
