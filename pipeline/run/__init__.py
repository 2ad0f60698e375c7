"""Running jobs: the scheduler on Ray, the task one job runs in, the lease on an output root, and
what a task reads (weights, images, model starts) and scores."""
