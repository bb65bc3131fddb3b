"""What the domains share (asset keys, table specs, run tags, reporting the stream's batches); defines nothing."""
