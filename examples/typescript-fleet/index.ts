// A small EFA fleet in its own VPC, in TypeScript, from the efa-infra component package (see README.md).
import * as efa from "@pulumi/efa-infra";

const fleet = {
    name: "gpu",
    instanceType: "g6.8xlarge",
    availabilityZone: "us-east-1a",
    nodes: { min: 0, desired: 2, max: 2 },
};

const network = new efa.EfaNetwork("network", {
    region: "us-east-1",
    network: { vpcCidr: "10.30.0.0/20", natGateways: "single" },
    fleets: [fleet],
});

// Other components' resources come in as plain ids.
const subnetId = network.privateSubnetIds.apply(ids => ids["us-east-1a"]);
const securityGroupIds = [network.securityGroupId];

const gpu = new efa.EfaFleet("gpu", {
    region: "us-east-1",
    fleet: fleet,
    subnetId: subnetId,
    securityGroupIds: securityGroupIds,
});

export const vpcId = network.vpcId;
export const launchTemplateId = gpu.launchTemplateId;
export const autoScalingGroup = gpu.asgName;
