"""Where a run lives: the output layout, the job record, fsspec access with retries and the input
policy, and reading a run back (results, earlier run forms)."""
