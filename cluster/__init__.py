"""SLURM job rendering and submission, multi-node rendezvous, Ray on SLURM, requeue on preemption."""
