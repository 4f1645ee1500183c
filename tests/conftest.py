"""Test-wide environment: no hub downloads, DeepSpeed on the CPU accelerator, one thread per op."""

import os

# Set before anything imports transformers/diffusers/deepspeed, so no test can reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
