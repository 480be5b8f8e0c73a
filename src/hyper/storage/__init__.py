"""Storage: volumes, bind mounts and tmpfs for containers, and the file share that carries them into a VM.

The rest of Hyper enters through this package's root: the mount options of
the front ends are parsed and checked here (`mounts`), named and anonymous
volumes live in a store of their own (`volumes`), and each VM's files cross
into it over virtio-9p, served by a confined helper (`share`).
"""
