"""Time Caruana greedy selection at CXR-LT scale: 50 members x 80,000 images x 40 classes.

Generated members (ensembles.simulate: correlated through a shared noise component, per-class quality
varying by member, Task 1 prevalences). Target: <= 60 s on 2 cores. Prints the time, the number of
objective evaluations, the score of the single best member, the plain mean and the greedy ensemble,
and the peak resident memory of the process (the (M, N, C) float32 stack alone is 640 MB).
Run from the repository root: `.venv/bin/python -m benchmarks.ensembles` (as a script, this file's name
would shadow the `ensembles` package).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from cxrlt.labels import CXR_LT_2024_TASK1 as SCHEMA
from ensembles.combiners import make_combiner
from ensembles.objective import Objective, ObjectiveSpec
from ensembles.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--images", type=int, default=80_000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    prevalence = np.array([SCHEMA.counts[c] / SCHEMA.total for c in SCHEMA.classes])
    started = time.perf_counter()
    sim = simulate(args.images, args.members, SCHEMA.classes, prevalence=prevalence, seed=args.seed)
    print(
        f"generated {sim.probs.shape} float32 ({sim.probs.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s"
    )

    objective = Objective(sim.labels, ObjectiveSpec(), SCHEMA.classes, SCHEMA.groups())
    started = time.perf_counter()
    greedy = make_combiner("greedy", {"iterations": args.iterations}).fit(sim.probs, objective)
    elapsed = time.perf_counter() - started
    evaluations = args.members * (args.iterations + 1) + 1  # singles, each step's candidates, the start
    single = max(objective(p) for p in sim.probs)
    mean = objective(make_combiner("mean_prob").predict(sim.probs))
    ensemble = objective(greedy.predict(sim.probs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(
        f"greedy: {args.members} members x {args.images} images x {len(SCHEMA.classes)} classes, "
        f"{args.iterations} iterations: {elapsed:.1f} s "
        f"({evaluations} objective evaluations, {elapsed / evaluations * 1e3:.0f} ms each)"
    )
    print(
        f"mAP (in-sample): best single {single:.4f}, mean {mean:.4f}, greedy {ensemble:.4f}; "
        f"members used {int((greedy.counts > 0).sum())}"
    )
    print(f"peak resident memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
