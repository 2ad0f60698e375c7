"""What to run: a manifest's rows expanded into jobs (a grid), each job's id, and the plan of
what is still to do in an output root."""
