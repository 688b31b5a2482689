"""The record layer: where every run, however it ended, is kept for auditors.

- ``stores``: where archived files live (a local directory, or S3);
- ``index``: the SQLite run index, one row per run, chained by hashes;
- ``files``: what is archived for a run (redacted notebook, HTML rendering, record);
- ``audit``: recomputing the chain and the file hashes to find anything changed.
"""
