"""Time `cxrlt ensemble build` with its default settings on generated members at CXR-LT scale.

Cases (`--case`, default both builds):
  nih     40 members x 12,221 dev images x 14 classes (NIH-14 prevalences): issue #17's measured case.
          Target: <= 2 min wall on 2 cores (the build before #17 took 15-20 min on real predictions).
  cxr-lt  40 members x 39,293 dev images x 40 classes (CXR-LT 2024 Task 1 prevalences). Target: <= 10 min.
  greedy  Caruana greedy alone, 50 members x 80,000 images x 40 classes, 20 steps, on --cpus threads.
          Target: <= 60 s.

Members come from ensembles.simulate with every member's logit = quality x (study severity + 1.6 x a
confounder shared by all members) + its own noise: the shared part loads on each member like the signal,
as features models learn from the same images do, so no weighting can subtract it (real members do not
allow that; unconfounded simulated members let stacking reach implausible scores). Member quality varies
by member (x0.5-1.5) more than by class (1.4-1.6): single members score mAP 0.14-0.19, their mean about
0.20, like the 40 real NIH members of issue #17 (0.195 out of fold).

For a build the script writes the members and labels as files, runs ensembles.build.build exactly as
`cxrlt ensemble build` does (the per-trial lines and the bar are its own output), and prints: wall time
of the whole build (reading files, Ray start, search, views, calibration, MLflow), the search's share,
the trials run and stopped early, the objective evaluations, and the out-of-fold scores. The MLflow
store and build folder go to a temporary folder. Run from the repository root (as a script, this file's
name would shadow the `ensembles` package):

    .venv/bin/python -m benchmarks.ensembles                 # both builds
    .venv/bin/python -m benchmarks.ensembles --case nih      # one
    .venv/bin/python -m benchmarks.ensembles --samples 64    # the MIMIC recipe's search size
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrlt.labels import get_schema
from ensembles.build import build
from ensembles.combiners import make_combiner
from ensembles.config import EnsembleConfig, SearchConfig
from ensembles.objective import Objective, ObjectiveSpec
from ensembles.simulate import simulate, write_simulation
from launch.console import make_console

# Realistic members, see the module docstring.
MEMBERS = {"shared_noise": 1.6, "quality_range": (1.4, 1.6), "member_spread": 0.5, "confounded": True}
CASES = {
    "nih": ("nih-14", 12_221, 40, 120.0),
    "cxr-lt": ("cxr-lt-2024-task1", 39_293, 40, 600.0),
}


def prevalences(schema_name: str) -> np.ndarray:
    schema = get_schema(schema_name)
    return np.array([schema.counts[c] / schema.total for c in schema.classes])


def run_build(case: str, samples: int | None, cpus: int, seed: int) -> None:
    schema_name, n_images, n_members, target = CASES[case]
    schema = get_schema(schema_name)
    console = make_console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sim = simulate(n_images, n_members, schema.classes, prevalences(schema_name), seed=seed, **MEMBERS)
        paths, labels = write_simulation(sim, root / "dev", "dev", schema.name, ".parquet")
        search = SearchConfig(cpus=cpus, seed=seed)
        if samples is not None:
            search.samples = samples
        config = EnsembleConfig(search=search, tracking_uri=f"sqlite:///{root}/mlruns.db")
        console.rule(f"{case}: {n_members} members x {n_images} images x {len(schema.classes)} classes")
        started = time.perf_counter()
        result = build(config, paths, labels, root / "build", console=console)
        wall = time.perf_counter() - started
    trials, scores = result.trials, result.recipe.scores
    goal = f"target <= {target:.0f} s on 2 cores" if samples is None else f"search.samples = {samples}"
    stopped = sum(not t.complete for t in trials)
    evaluations = sum(t.evaluations for t in trials)
    print(
        f"[{case}] build wall {wall:.0f} s ({goal}), of which the trials' own compute "
        f"{sum(t.seconds for t in trials):.0f} s over {cpus} CPUs"
    )
    print(
        f"[{case}] {len(trials)} trials ({stopped} stopped early by ASHA), {evaluations} objective evaluations, "
        f"chosen: {result.recipe.combiner['name']} {trials[0].params}"
    )
    print(
        f"[{case}] out-of-fold mAP: combiner {scores['oof_combiner']:.4f}, final {scores['oof_final']:.4f}; "
        f"best single member {scores['best_single_member']:.4f}, mean of members {scores['mean_prob']:.4f}"
    )


def run_greedy(members: int, images: int, iterations: int, cpus: int, seed: int) -> None:
    schema = get_schema("cxr-lt-2024-task1")
    started = time.perf_counter()
    sim = simulate(images, members, schema.classes, prevalences(schema.name), seed=seed, **MEMBERS)
    generated = time.perf_counter() - started
    print(f"generated {sim.probs.shape} float32 ({sim.probs.nbytes / 2**20:.0f} MiB) in {generated:.1f} s")
    objective = Objective(sim.labels, ObjectiveSpec(), schema.classes, schema.groups(), threads=cpus)
    started = time.perf_counter()
    greedy = make_combiner("greedy", {"iterations": iterations}).fit(sim.probs, objective)
    elapsed = time.perf_counter() - started
    evaluations = objective.evaluations
    single = max(objective(p) for p in sim.probs)
    mean = objective(make_combiner("mean_prob").predict(sim.probs))
    ensemble = objective(greedy.predict(sim.probs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(
        f"greedy: {members} members x {images} images x {len(schema.classes)} classes, at most {iterations} steps: "
        f"{elapsed:.1f} s on {cpus} threads (target <= 60 s), {evaluations} objective evaluations, "
        f"{elapsed / evaluations * 1e3:.0f} ms each"
    )
    print(
        f"mAP (in-sample): best single {single:.4f}, mean {mean:.4f}, greedy {ensemble:.4f}; "
        f"members used {int((greedy.counts > 0).sum())}; peak resident memory {peak:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["builds", *CASES, "greedy"], default="builds")
    parser.add_argument("--samples", type=int, help="search.samples (default: the build's default)")
    parser.add_argument("--cpus", type=int, default=2, help="search.cpus (threads, for the greedy case)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=50, help="greedy case")
    parser.add_argument("--images", type=int, default=80_000, help="greedy case")
    parser.add_argument("--iterations", type=int, default=20, help="greedy case")
    args = parser.parse_args()
    if args.case == "greedy":
        run_greedy(args.members, args.images, args.iterations, args.cpus, args.seed)
        return
    for case in CASES if args.case == "builds" else [args.case]:
        run_build(case, args.samples, args.cpus, args.seed)


if __name__ == "__main__":
    main()
