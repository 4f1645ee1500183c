"""Data: raw datasets -> WebDataset shard sets -> image- and study-level readers.

- shardset: the `_index.json` / sample contract;  records: source-neutral Record + label-cell checks
- sources/: one reader per raw layout (mimic-cxr-lt, nih, chexpert, padchest, csv, starter)
- splits, plan: patient-level split assignment; grouping, ordering and fingerprinting of samples
- images, writer: decode/resize/encode and the resumable parallel shard writer
- partition, samplers, transforms, decoding, readers: the training and evaluation readers and the
  batch contract (documented in decoding) that the trainer consumes
"""

from cxrlt.data.readers import EvalReader, ReaderConfig, TrainReader, make_loader
from cxrlt.data.shardset import ShardIndex, read_index
from cxrlt.data.transforms import TransformConfig

__all__ = ["EvalReader", "ReaderConfig", "ShardIndex", "TrainReader", "TransformConfig", "make_loader", "read_index"]
