"""EC2 for clusterbook: the machines a cluster runs on, from validated input to teardown.

    validate   refuse bad input before any API call          -> ClusterSpec
    pricing    hourly cost preview from a price table in the repo
    session    boto3 clients (endpoint from settings, adaptive retries)
    errors     AWS errors translated into AwsError subclasses a user can act on
    images     Canonical Ubuntu image look-up (SSM public parameter, then describe_images)
    network    default or dedicated VPC, and the cluster's security group
    keys       the SSH key pair; the private key stays in the cluster's state folder
    instances  one RunInstances per role, discovery by tags, waits
    inventory  the cluster state store the bootstrap runbook reads
    provision  the steps above in order (the runbook calls them one by one)
    teardown   everything carrying the cluster tag, removed in dependency order

Every resource carries the tags in ``tags``; discovery and teardown go by them only.
"""
