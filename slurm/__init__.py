"""SLURM dispatch through submitit: executors, arrays, requeue, and a dev cluster for tests."""
