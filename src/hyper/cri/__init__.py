"""hyperd's Kubernetes Container Runtime Interface: CRI v1 over gRPC on a unix socket.

A kubelet or crictl drives hyperd through it (`hyperd --cri-socket PATH`).
This package only translates: CRI requests become the daemon's own requests
(a sandbox and its container are a Hyper pod seen through another front end)
and the daemon's errors become gRPC status codes through one table.
"""

from hyper.cri.server import CriServer, start_cri_server

__all__ = ["CriServer", "start_cri_server"]
