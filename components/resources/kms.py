"""A customer managed KMS key that the account administers through IAM, for what the stack encrypts at rest."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws


def account_key(name: str, description: str, tags: dict[str, str], opts: pulumi.ResourceOptions) -> aws.kms.Key:
    """Rotated yearly. Its policy says outright what KMS's default key policy does: the account administers the key,
    through IAM policies; services use it through the grants of the principals that create their resources."""
    account = aws.get_caller_identity_output().account_id
    return aws.kms.Key(
        name,
        aws.kms.KeyArgs(
            description=description, enable_key_rotation=True, tags=tags,
            policy=account.apply(lambda account_id: json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "AccountAdministersThroughIam", "Effect": "Allow",
                               "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"}, "Action": "kms:*", "Resource": "*"}],
            })),
        ),
        opts=opts,
    )
