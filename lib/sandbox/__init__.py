"""The local sandbox that stands in for AWS and its hosts: a moto server (``moto``) and, in
sibling modules, the hosts behind the instances it reports."""
