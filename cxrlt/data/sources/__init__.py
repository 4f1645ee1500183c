"""Source readers: one module per raw dataset layout, each returning a `SourceTable` of `Record`s.

Every reader takes the target label schema and returns labels already in its order (classes the source
lacks are -1), validated cell by cell, so the shard writer never sees a source-specific spelling.
"""
