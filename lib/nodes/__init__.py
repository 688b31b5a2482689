"""Reaching cluster nodes over SSH: Fabric connections with verified host keys (``ssh``) and
where those host keys come from (``hostkeys``)."""
