"""clusterbook: parameterized Jupyter runbooks for Kubernetes on AWS, with an audit trail."""

__version__ = "0.1.0"
