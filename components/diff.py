"""What a change to a stack does to its resources: created, updated in place,
replaced or deleted, and which inputs force each replacement.

Resources are matched by URN between two offline runs of the program. Whether
a changed input replaces a resource comes from the provider's own facts
(data/replace_facts.json: terraform-provider-aws ForceNew, which pulumi-aws
inherits, with the file and commit each was read from). Pure: no Pulumi import.
"""

from __future__ import annotations

# The kinds a change must never replace or delete unasked; the same kinds are marked protected.
PROTECTED_TYPES = {
    "aws:ec2/vpc:Vpc": "VPC",
    "aws:ec2/vpcIpv4CidrBlockAssociation:VpcIpv4CidrBlockAssociation": "VPC CIDR block",
    "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/natGateway:NatGateway": "NAT gateway",
    "eks:index:Cluster": "EKS cluster",
    "aws:eks/nodeGroup:NodeGroup": "node group",
}
