"""Test-wide environment: no hub downloads, DeepSpeed on the CPU accelerator, one thread per op."""

import os
from pathlib import Path

import pytest

# Set before anything imports transformers/diffusers/deepspeed, so no test can reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Before torch is imported: OpenMP sizes its pool once, and tests fork ranks from this process; a child
# forked after a pool of several threads ran hangs in its first parallel region (GNU OpenMP is not fork-safe).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cuda_available() -> bool:
    import torch  # after OMP_NUM_THREADS

    return torch.cuda.is_available()


# DeepSpeed picks its accelerator once, when first imported: on a GPU machine the CUDA tests need it.
if not _cuda_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

# CI clones the project with shared/ beside it, as in the developers' checkouts.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public tables and images beside the checkout (../shared/data)."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA} is missing: the tests expect shared/ beside the checkout")
    return SHARED_DATA


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Seconds per test folder (setup + call + teardown), so a folder creeping towards CI's limit is seen."""
    per_folder: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                folder = str(Path(report.nodeid.split("::")[0]).parent)
                per_folder[folder] = per_folder.get(folder, 0.0) + report.duration
    if not per_folder:
        return
    terminalreporter.section("seconds per test folder")
    for folder, seconds in sorted(per_folder.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {folder}")
    terminalreporter.write_line(f"{sum(per_folder.values()):8.1f}  total")
