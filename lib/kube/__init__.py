"""A real Kubernetes control plane on this machine: pinned binaries, PKI, processes, kwok.

``toolchain`` finds (or builds) the binaries pinned in ``toolchain/versions.env``; ``pki``
makes the certificates; ``stages`` holds kwok's node and pod lifecycle; ``processes`` runs
and stops local programs; ``controlplane`` puts them together.
"""
