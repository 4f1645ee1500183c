"""Running the installed `cxrlt` console script the way a user does."""

import subprocess
import sys
from pathlib import Path

CXRLT = Path(sys.executable).parent / "cxrlt"


def cxrlt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CXRLT), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)
