"""Settings for the whole test session.

Tests may send traffic only to loopback or into network namespaces they make
themselves: a hyperd started in the machine's own namespace must not make a
bridge, taps or NAT rules there. hyperd's default bridge is off for every
process the tests start (dockerd's --bridge=none); the networking tests,
which run hyperd inside a namespace of their own, turn it on explicitly.
"""

from __future__ import annotations

import os

os.environ["HYPER_BRIDGE"] = "none"
