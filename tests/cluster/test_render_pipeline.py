"""`cxrlt slurm pipeline CONFIG`: the plan of CONFIG's [pipeline] (cxrlt.pipeline.make_plan) as one SLURM
job per step, each after the jobs of its steps (afterok), on configs/demo.toml. A dry run renders valid
bash with absolute paths and the resources of each kind of step; a submission through a fake `sbatch`
submits the jobs in plan order with their dependencies and creates the pipeline's parent MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

from cluster.plan import PARENT_PLACEHOLDER
from cluster.submit import SubmissionRecord
from cxrlt.pipeline import Step, load_pipeline, make_plan
from tests.cli import cxrlt
from tests.cluster.conftest import shell_check
from tests.cluster.test_render import sbatch_options, scripts

REPO = Path(__file__).resolve().parents[2]
RESOURCES = ("--set", "slurm.nodes=2", "--set", "slurm.gpus_per_node=4")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A checkout's configs/ in a fresh folder: the pipeline's relative paths resolve against it."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


def plan_of(workdir: Path) -> list[Step]:
    cfg = load_pipeline(workdir / "configs" / "demo.toml")
    return make_plan(replace(cfg, out_dir=workdir.resolve() / cfg.out_dir))


def job_argv(step: Step, folder: Path) -> list[str]:
    """The step's command line as its job runs it: the steps' configs are snapshots in `folder`."""
    snapshots = {
        "configs/demo-tune.toml": "tune",
        "configs/synth-demo.toml": "synth",
        "configs/demo-member.toml": "train",
    }
    return [str(folder / "configs" / f"{snapshots[w]}.toml") if w in snapshots else w for w in step.argv]


def command_words(script: str) -> list[str]:
    """The words of the script's cxrlt command line and its RUN_DIR."""
    lines = [x for x in script.splitlines() if '"${CX[@]}"' in x or x.startswith("RUN_DIR=")]
    return [w for x in lines for w in shlex.split(x.removeprefix("run_step ").split(" || ")[0])]


def test_one_job_per_step_with_the_plan_dependencies(workdir: Path, slurm_tools: None) -> None:
    done = cxrlt("slurm", "pipeline", "configs/demo.toml", "--dry-run", *RESOURCES, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert not (workdir / "slurm-jobs").exists() and not (workdir / "runs").exists(), "a dry run writes nothing"
    plan = plan_of(workdir)
    commands = done.stderr.splitlines()
    rendered = scripts(done.stdout)
    assert len(plan) == len(commands) == len(rendered) == 29
    for step, command, script in zip(plan, commands, rendered, strict=True):
        assert command.split()[-1].endswith(f"/{step.name}.sbatch"), (step.name, command)
        after = re.findall(r"<(\S+) job id>", command)
        assert after == list(step.after) and ("--dependency=afterok:<" in command) == bool(after), command
        assert f"--job-name=cxrlt-pipeline-{step.name}" in sbatch_options(script)
        shell_check(script, workdir)


def test_resources_and_command_lines_per_kind_of_step(workdir: Path, slurm_tools: None) -> None:
    done = cxrlt("slurm", "pipeline", "configs/demo.toml", "--dry-run", *RESOURCES, cwd=workdir)
    assert done.returncode == 0, done.stderr
    jobs = {step.name: (step, script) for step, script in zip(plan_of(workdir), scripts(done.stdout), strict=True)}
    folder = Path(done.stderr.split()[-1]).parent
    out = workdir.resolve() / "runs" / "demo"
    for name, (step, script) in jobs.items():
        options = sbatch_options(script)
        words = command_words(script)
        argv = job_argv(step, folder)
        # Every path is absolute: in the command line, as the value of a KEY=VALUE, and in #SBATCH.
        for word in [*words, *options]:
            value = word.split("=", 1)[-1]
            assert "/" not in value or value.startswith("/"), (name, word)
        # The steps' MLflow runs nest under the pipeline's parent run, in the pipeline's store.
        assert f"export MLFLOW_TRACKING_URI=sqlite:///{out}/mlruns.db" in script
        assert PARENT_PLACEHOLDER in script and "export CXRLT_PARENT_RUN_ID" not in script
        preemptible = name.startswith(("train-", "tune", "synth-train"))
        assert ("--requeue" in options) == preemptible, name
        if name.startswith("train-"):
            assert {"--nodes=2", "--gpus-per-node=4"} <= set(options)
            assert 'srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1' in script
            assert '--nnodes "$SLURM_JOB_NUM_NODES" --nproc 4 --rdzv-endpoint "$HEAD:$PORT"' in script
            assert "--nproc 2" not in script  # the plan's own --nproc gives way to [slurm]'s ranks
            # Every other argument of the plan's command line is kept, in order.
            assert argv[-2:] == ["--nproc", "2"] and shlex.join(argv[:-2]) in script
            assert f"RUN_DIR={out}/members/{name.removeprefix('train-')}" in script
        elif name == "tune":
            assert {"--nodes=2", "--gpus-per-node=4"} <= set(options) and "ray start --head" in script
            assert f'run_step "${{CX[@]}}" {shlex.join(argv)} "${{RESUME[@]}}"' in script
            assert f"RUN_DIR={out}/tune" in script
        elif name == "synth-train":
            assert {"--nodes=1", "--gpus-per-node=4"} <= set(options) and f"RUN_DIR={out}/synth" in script
            assert f'run_step srun --ntasks=1 "${{CX[@]}}" {shlex.join(argv)} "${{RESUME[@]}}"' in script
        elif name.startswith("predict-"):
            assert {"--nodes=1", "--gpus-per-node=4"} <= set(options)
            assert script.rstrip().endswith(shlex.join(argv) + " --nproc 4")
        elif step.heavy:  # synth sample, ensemble build: one task on one node with the GPUs
            assert {"--nodes=1", "--gpus-per-node=4"} <= set(options)
            assert script.rstrip().endswith('srun --ntasks=1 "${CX[@]}" ' + shlex.join(argv))
        else:  # labels, shard, synth report, ensemble apply, submit, report: CPU only
            assert "--nodes=1" in options and not any(o.startswith("--gpus") for o in options), name
            assert "export DS_ACCELERATOR=cpu" in script
            assert script.rstrip().endswith('srun --ntasks=1 "${CX[@]}" ' + shlex.join(argv))
    # The steps' own configs run from snapshots in the submission folder (the tuned best.toml from out_dir).
    assert re.fullmatch(r"/\S+/slurm-jobs/pipeline-[\d-]+-\w{4}", str(folder))
    assert f" tune {folder}/configs/tune.toml " in jobs["tune"][1]
    assert f" train {out}/tune/best.toml " in jobs["train-vit"][1]


def fake_tools(folder: Path) -> Path:
    """`sbatch` that logs its arguments and prints ids 1001, 1002, ...; `scontrol` that shows any job
    as pending on its dependency."""
    folder.mkdir()
    log = folder / "sbatch.log"
    (folder / "sbatch").write_text(f"""#!/bin/bash
n=$(( $(cat {log} 2>/dev/null | wc -l) + 1 ))
echo "$*" >> {log}
echo $((1000 + n))
""")
    (folder / "scontrol").write_text("""#!/bin/bash
echo "JobId=$4 JobState=PENDING Reason=Dependency ExitCode=0:0 Restarts=0 NodeList=(null)"
""")
    for tool in ("sbatch", "scontrol"):
        (folder / tool).chmod(0o755)
    return log


def test_submission_order_dependencies_and_parent_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_tools(workdir / "bin")
    monkeypatch.setenv("PATH", f"{workdir / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("CXRLT_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    done = cxrlt("slurm", "pipeline", "configs/demo.toml", cwd=workdir)
    assert done.returncode == 0, done.stderr
    plan = plan_of(workdir)
    ids = {step.name: str(1001 + i) for i, step in enumerate(plan)}
    assert re.findall(r"submitted (\S+) as job (\d+)", done.stdout) == list(ids.items())
    calls = log.read_text().splitlines()
    folder = Path(done.stdout.split("submission folder: ")[1].strip())
    for step, call in zip(plan, calls, strict=True):
        after = [f"--dependency=afterok:{':'.join(ids[a] for a in step.after)}"] if step.after else []
        assert call.split() == ["--parsable", *after, str(folder / f"{step.name}.sbatch")]

    # The parent run exists, ended, in the pipeline's store; every job exports its id.
    run_id = re.search(r"MLflow parent run: (\w+)", done.stdout).group(1)
    out = workdir.resolve() / "runs" / "demo"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out}/mlruns.db")
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["cxrlt.kind"] == "pipeline"
    assert parent.data.tags["slurm_submission"] == str(folder)
    assert client.get_experiment(parent.info.experiment_id).name == "cxrlt-demo"
    for step in plan:
        script = (folder / f"{step.name}.sbatch").read_text()
        assert f"export CXRLT_PARENT_RUN_ID={run_id}" in script and PARENT_PLACEHOLDER not in script
    assert (folder / "configs" / "tune.toml").read_text() == (workdir / "configs" / "demo-tune.toml").read_text()

    record = SubmissionRecord.load(folder / "submission.json")
    assert record.parent_run_id == run_id
    assert [(s.name, s.depends_on) for s in record.steps] == [(s.name, [ids[a] for a in s.after]) for s in plan]
    status = json.loads(cxrlt("slurm", "status", "--json", cwd=workdir).stdout)
    assert [t["step"] for t in status["tasks"]] == [s.name for s in plan] and status["state"] == "PENDING"


def test_records_of_one_dependency_per_job_still_load(tmp_path: Path) -> None:
    path = tmp_path / "submission.json"
    path.write_text(
        json.dumps(
            {
                "kind": "train",
                "dir": str(tmp_path),
                "created_at": "2025-01-01T00:00:00+00:00",
                "steps": [
                    {"name": "a", "job_id": "1", "script": "a.sbatch", "depends_on": None},
                    {"name": "b", "job_id": "2", "script": "b.sbatch", "depends_on": "1"},
                ],
            }
        )
    )
    assert [s.depends_on for s in SubmissionRecord.load(path).steps] == [[], ["1"]]


def test_the_real_recipes_step_configs_are_frozen_in_the_submission_folder(workdir: Path) -> None:
    """Every step config the real recipe names (the weak-label rules included) is copied beside the jobs, so
    editing it cannot change a queued job, and the jobs name the copies by absolute path."""
    from cluster.plan import make_plan as slurm_plan

    plan = slurm_plan("pipeline", workdir / "configs" / "mimic-cxr-lt-2024.toml", [], [], workdir)
    copies = {path.name: text for path, text in plan.files.items()}
    assert copies["weak-labels.toml"] == (workdir / "configs" / "fewshot-mimic-task3.toml").read_text()
    [weak] = [job for job in plan.jobs if job.name == "weak-labels"]
    assert f"--rules {plan.dir / 'configs' / 'weak-labels.toml'}" in weak.script
    assert "configs/fewshot-mimic-task3.toml" not in "".join(job.script for job in plan.jobs)
