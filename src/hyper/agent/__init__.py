"""The guest agent and the protocol between it and the host.

`protocol` and `guest` run inside the VM and import only the standard
library; `host` is the host's side of the channel.
"""
