"""MLflow tracking: the one place that opens runs, logs from rank 0 only and records lineage.

A `Tracker` wraps an explicit `MlflowClient` for one tracking URI instead of mlflow's fluent API,
whose process-global "active run" stack would tie concurrent runs (Tune trials, ensemble children) to
whichever was started last. The default store is SQLite (`sqlite:///DIR/mlruns.db`) with artifacts in
`DIR/mlartifacts`: MLflow 3 disables the plain file store.

Child runs carry the `mlflow.parentRunId` tag, which is what the MLflow UI nests on. On ranks other
than 0 (`RANK` set by torchrun/srun) `run()` yields a `Run` that records nothing, so distributed code
calls the same functions on every rank.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's system tags (mlflow.utils.mlflow_tags), spelled out so that importing this module does not
# import mlflow: only rank 0 logs, and the other ranks (and GPU nodes without mlflow) never need it.
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
# MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it holds model training;
# with it, the link a command prints lands on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# MLflow rejects param values above this length; configs longer than this go in as artifacts.
MAX_PARAM_LENGTH = 6000
# Set by `cxrlt pipeline` (and its SLURM jobs) for the commands it runs: each command's top-level run
# becomes a child of the pipeline's run, so one parent holds everything a pipeline did.
PARENT_RUN_ENV = "CXRLT_PARENT_RUN_ID"
# On a run started instead of reopening an earlier one (its params disagree with the new config, or the
# store no longer holds it): the earlier run's id, so the two stay linked in the UI and in searches.
PREVIOUS_RUN_TAG = "cxrlt.previous_run_id"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def sqlite_uri(folder: str | os.PathLike) -> str:
    """The tracking URI of the default local store in `folder` (created if missing)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlruns.db'}"


def default_uri(folder: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI when set (a pipeline's or a cluster's shared store), else SQLite in `folder`."""
    return os.environ.get(TRACKING_URI_ENV) or sqlite_uri(folder)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class Run:
    """Logging into one MLflow run; every method is a no-op when `run_id` is None (non-zero ranks)."""

    def __init__(self, client: MlflowClient | None, run_id: str | None) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id is None or self.client is None:
            return
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        self.client.log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        if self.run_id is None or self.client is None:
            return
        from mlflow.entities import Metric

        timestamp = _now_ms()
        items = [Metric(str(k), float(v), timestamp, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is None or self.client is None:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.run_id is None or self.client is None:
            return
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def _param_value(value: Any) -> str:
    """A param as MLflow stores it (what `Run.log_params` logs)."""
    return str(value)[:MAX_PARAM_LENGTH]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """Runs in one MLflow store. `uri`: any MLflow tracking URI (a server for clusters)."""

    def __init__(self, uri: str, artifact_root: str | os.PathLike | None = None) -> None:
        self.uri = uri
        if artifact_root is None and uri.startswith("sqlite:///"):
            artifact_root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        self.artifact_root = None if artifact_root is None else Path(artifact_root).resolve()
        # Only rank 0 touches the store: opening a new SQLite store runs schema migrations, and several
        # ranks migrating the same file at once corrupt its version table.
        self.client: MlflowClient | None = None
        if is_rank_zero():
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)

    @property
    def store(self) -> MlflowClient:
        """The client of rank 0; other ranks never reach the store (see __init__)."""
        if self.client is None:
            raise RuntimeError(f"rank {os.environ.get('RANK')} may not open the tracking store {self.uri}")
        return self.client

    def experiment_id(self, name: str) -> str:
        found = self.store.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older cxrlt or by hand
                self.store.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            return found.experiment_id
        location = None if self.artifact_root is None else (self.artifact_root / name).as_uri()
        return self.store.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )

    @contextlib.contextmanager
    def run(
        self,
        experiment: str,
        name: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        resume_run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[Run]:
        """Open a run in `experiment`; it ends FINISHED, or FAILED on an error. A child of `parent_run_id`
        (default: $CXRLT_PARENT_RUN_ID) is created in its parent's experiment instead.

        `resume_run_id`: continue that run (a resumed or requeued job keeps one run and one metric
        history) instead of creating one; it is reopened as RUNNING. `params`: the params the caller is
        about to log; MLflow refuses to change a logged param, so when that run recorded other values for
        any of them (a rerun with a fixed config), or the store does not hold it, a new run is created
        instead, tagged with the earlier run's id (PREVIOUS_RUN_TAG).
        """
        if not is_rank_zero():
            yield Run(None, None)
            return
        if resume_run_id is not None and params is not None:
            changed = self.changed_params(resume_run_id, params)
            if changed is None or changed:
                tags = {**(tags or {}), PREVIOUS_RUN_TAG: resume_run_id}
                resume_run_id = None
        if resume_run_id is not None:
            run_id = resume_run_id
            self.store.update_run(run_id, status="RUNNING")
            if tags:
                Run(self.store, run_id).set_tags(tags)
        else:
            all_tags = {MLFLOW_RUN_NAME: name, **(tags or {})}
            parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
            if parent_run_id is not None:
                all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
                # The MLflow UI nests runs only inside one experiment: a child goes where its parent is.
                experiment_id = self.store.get_run(parent_run_id).info.experiment_id
            else:
                experiment_id = self.experiment_id(experiment)
            created = self.store.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
            run_id = created.info.run_id
        try:
            yield Run(self.store, run_id)
        except BaseException as e:
            # A preempted job exits through SystemExit (see cxrlt.requeue) and a user's Ctrl-C through
            # KeyboardInterrupt: those runs were stopped, not broken.
            stopped = isinstance(e, (SystemExit, KeyboardInterrupt))
            self.store.set_terminated(run_id, status="KILLED" if stopped else "FAILED")
            raise
        self.store.set_terminated(run_id, status="FINISHED")

    def changed_params(self, run_id: str, params: Mapping[str, Any]) -> list[str] | None:
        """The keys of `params` that run `run_id` recorded with another value (None: no such run)."""
        from mlflow.exceptions import MlflowException

        try:
            recorded = self.store.get_run(run_id).data.params
        except MlflowException:
            return None
        return sorted(k for k, v in params.items() if str(k) in recorded and recorded[str(k)] != _param_value(v))

    def children(self, run_id: str) -> list[Any]:
        """The runs whose parent is `run_id`, in any experiment of this store."""
        experiments = [e.experiment_id for e in self.store.search_experiments()]
        return self.store.search_runs(experiments, filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'")
