"""hyperd: the daemon that owns detached pods, their state and their logs.

Its QEMU processes are not its children: they outlive a crash or restart of
hyperd, which re-adopts them from its state at start-up (see `pods`).
"""
