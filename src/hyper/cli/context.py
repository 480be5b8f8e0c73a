"""What every CLI command gets besides its parsed arguments."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from hyper.paths import HyperPaths


@dataclass(frozen=True)
class CliContext:
    paths: HyperPaths
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
