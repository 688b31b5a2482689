"""Reaching cluster nodes over SSH: Fabric connections with verified host keys (``ssh``) and
where those host keys come from (``hostkeys``); what a node is and what would stop kubeadm on
it (``facts``); the journal and unit status gathered when something failed (``diagnostics``)."""
