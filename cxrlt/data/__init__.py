"""Data: raw datasets -> WebDataset shard sets -> image- and study-level readers.

- shardset: the `_index.json` / sample contract;  records: source-neutral Record + label-cell checks
- sources/: one reader per raw layout (mimic-cxr-lt, nih, chexpert, padchest, csv, starter)
- splits, plan: patient-level split assignment; grouping, ordering and fingerprinting of samples
- images, writer: decode/resize/encode and the resumable parallel shard writer
- partition, samplers, transforms, decoding, readers: the training and evaluation readers and the
  batch contract (documented in decoding) that the trainer consumes
- rehearsal*: the MIMIC-CXR-LT-shaped rehearsal set made from the embedded images (`cxrlt rehearsal make`)
Nothing is imported here, so a command that needs only a table reader does not pay for torch.
"""
