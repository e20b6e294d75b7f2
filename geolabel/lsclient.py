"""The one place geolabel talks to Label Studio (through label-studio-sdk).

Every SDK or transport error is turned into a :class:`LabelStudioError` whose
message says what failed and what to do; the API token never appears in it.
Transient failures (connection refused or reset, timeouts, HTTP 502/503/504) are
retried here and only here, with exponential backoff, as a client's :class:`Retry`
says (the SDK's own retries are off). A request that creates something is only
retried when it cannot have reached Label Studio (no connection, HTTP 502/503).
"""

from __future__ import annotations

import base64
import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.types import ImportApiRequest, PredictionRequest

from geolabel.config import Config
from geolabel.credentials import read_credentials
from geolabel.errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnreachableError
from geolabel.lsmodels import LabelledTask

T = TypeVar("T")
logger = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
#: Webhook actions the ML backend records for the trainer.
ANNOTATION_ACTIONS = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
)
IMPORT_BATCH = 500
PAGE_SIZE = 1000
#: Regex that matches no file: the local storage only grants Label Studio the
#: right to serve display tiles; a "Sync" in the UI must not create tasks.
NO_SYNC_REGEX = "(?!)"
#: Title of the Data Manager tab geolabel keeps on each project (:meth:`LabelStudioClient.ensure_queue_view`).
QUEUE_VIEW_TITLE = "Next to label (geolabel)"
#: The Data Manager's first tab as Label Studio creates it for a project without tabs: every task.
DEFAULT_VIEW: dict[str, Any] = {"type": "list", "target": "tasks", "title": "Default"}
#: That tab's filter: tasks not yet labelled ("Completed" is empty), as the Data Manager writes it.
QUEUE_VIEW_FILTERS: dict[str, Any] = {
    "conjunction": "and",
    "items": [
        {"filter": "filter:tasks:completed_at", "operator": "empty", "type": "Datetime", "value": True}
    ],
}
#: That tab's order: the score of the project's model version's prediction, lowest first (no score last).
QUEUE_VIEW_ORDERING = ["tasks:predictions_score"]
#: Title of the Data Manager tab of the tiles sent back for review
#: (:meth:`~LabelStudioClient.ensure_review_view`).
REVIEW_VIEW_TITLE = "Review: low agreement (geolabel)"
#: HTTP answers that mean "not now" (a proxy without its upstream, a restarting or overloaded server).
TRANSIENT_STATUS = frozenset({502, 503, 504})
#: Of those, the ones after which a request that creates something surely was not carried out.
NOT_DONE_STATUS = frozenset({502, 503})


@dataclass(frozen=True)
class Retry:
    """Tries of a call that failed transiently: ``attempts`` in all; the first wait, in seconds, doubles.

    The default, 5 attempts waiting 2 + 4 + 8 + 16 s, gives Label Studio about 30 s to come back.
    """

    attempts: int = 5
    wait: float = 2.0


#: One attempt: a command run by hand says at once that Label Studio is unreachable.
NO_RETRY = Retry(1, 0.0)


@dataclass(frozen=True)
class ProjectRef:
    """A Label Studio project: id, title, whether this call created it, and its labelling config."""

    id: int
    title: str
    created: bool
    label_config: str
    sampling: str


@dataclass(frozen=True)
class MLBackendRef:
    """An ML backend connected to a project: its id in Label Studio, URL and connection state."""

    id: int
    url: str
    state: str


@dataclass(frozen=True)
class QueuedTask:
    """An unlabelled task in the order Label Studio's uncertainty sampling serves it."""

    task_id: int
    tile_id: str | None
    score: float | None


@dataclass(frozen=True)
class TaskState:
    """A task's id, the tile it shows and its number of (non-cancelled) annotations."""

    task_id: int
    tile_id: str | None
    annotations: int


class LabelStudioClient:
    """A connection to one Label Studio server with one API token.

    Args:
        url: base URL of the server, e.g. ``http://127.0.0.1:8080``.
        token: API token (legacy ``Token`` or personal access token).
        timeout: seconds per request.
        retry: how transient failures are retried (:data:`NO_RETRY` by default).
    """

    def __init__(self, url: str, token: str, timeout: float = 60.0, retry: Retry = NO_RETRY) -> None:
        if not token:
            raise LabelStudioAuthError(
                "no Label Studio API token: set label_studio.token in geolabel.toml or "
                "$GEOLABEL_LABEL_STUDIO_TOKEN, or start the local server with `geolabel serve`"
            )
        self.url = url.rstrip("/")
        self._token = token
        self.retry = retry
        self._sdk = LabelStudio(base_url=self.url, api_key=token, timeout=timeout, max_retries=0)  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    def with_retry(self, retry: Retry) -> LabelStudioClient:
        """The same client (same connection pool) with another retry policy."""
        other = copy.copy(self)
        other.retry = retry
        return other

    def _call(self, what: str, fn: Callable[[], T], creates: bool = False) -> T:
        """Run one SDK call, retrying transient failures; ``creates``: the call is not idempotent.

        Raises:
            LabelStudioError: when it failed for good (LabelStudioUnreachableError when unreachable).
        """
        started, wait = time.monotonic(), self.retry.wait
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn()
            except (httpx.TransportError, ApiError) as exc:
                if attempt == self.retry.attempts or not _transient(exc, creates):
                    raise self._error(what, exc, attempt, time.monotonic() - started) from None
                logger.warning(
                    "Label Studio at %s: could not %s (%s); attempt %d of %d, trying again in %.1f s",
                    self.url, what, _reason(exc), attempt, self.retry.attempts, wait,
                )  # fmt: skip
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: Exception, attempts: int, seconds: float) -> LabelStudioError:
        tried = f": unreachable after {attempts} attempts over {seconds:.0f} s" if attempts > 1 else ""
        if isinstance(exc, httpx.TimeoutException):
            return LabelStudioUnreachableError(
                f"Label Studio at {self.url} did not answer in time while trying to {what}{tried}; it may "
                "have done it anyway. Run the same command again: imports complete without duplicates"
            )
        if isinstance(exc, httpx.TransportError):
            return LabelStudioUnreachableError(
                f"cannot reach Label Studio at {self.url} ({type(exc).__name__}) while trying to {what}"
                f"{tried}; is it running? Start the local one with `geolabel serve`, or fix label_studio.url"
            )
        if isinstance(exc, ApiError) and exc.status_code in TRANSIENT_STATUS:
            return LabelStudioUnreachableError(
                f"Label Studio at {self.url} is unavailable (HTTP {exc.status_code}) while trying to {what}"
                f"{tried}; it is restarting, overloaded or its proxy lost it: check that it runs and its "
                "log, then run the same command again"
            )
        return self._api_error(what, cast(ApiError, exc))

    def _api_error(self, what: str, exc: ApiError) -> LabelStudioError:
        status = exc.status_code
        if status in (401, 403):
            return LabelStudioAuthError(
                f"Label Studio at {self.url} rejected the API token (HTTP {status}) while trying to {what}; "
                "check label_studio.token in geolabel.toml or $GEOLABEL_LABEL_STUDIO_TOKEN"
            )
        body = self._scrub(str(exc.body))[:300]
        return LabelStudioError(f"Label Studio could not {what}: HTTP {status}: {body}")

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    # connection ---------------------------------------------------------------

    def check(self) -> str:
        """Check the server answers and accepts the token; return the user's e-mail.

        Raises:
            LabelStudioUnreachableError: nothing answers at the URL.
            LabelStudioAuthError: the token is rejected.
        """
        user = self._call("identify the API token's user", self._sdk.users.whoami)
        return str(user.email or user.username or "")

    # projects -----------------------------------------------------------------

    def project_title(self, project_id: int) -> str | None:
        """Title of project ``project_id``, or None when it does not exist (or the token may not see it)."""
        try:
            project = self._call("read the project", lambda: self._sdk.projects.get(id=project_id))
        except LabelStudioError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        return str(project.title)

    def find_projects(self, title: str) -> list[int]:
        """Ids of the projects titled exactly ``title``."""
        projects: list[Any] = self._call(
            "list projects", lambda: list(self._sdk.projects.list(title=title, page_size=100))
        )
        return [int(p.id or 0) for p in projects if p.title == title]

    def ensure_project(
        self, title: str, label_config: str, known_id: int | None = None, instructions: str = ""
    ) -> ProjectRef:
        """Return project ``known_id`` if it exists, else the one titled ``title``, else create it.

        A new project gets ``label_config`` and, when given, ``instructions`` (HTML) shown to annotators.

        Raises:
            LabelStudioError: if several projects share the title, or a request fails.
        """
        if known_id is None or self.project_title(known_id) != title:
            matches = self.find_projects(title)
            if len(matches) > 1:
                raise LabelStudioError(
                    f"{len(matches)} Label Studio projects are titled {title!r} (ids {matches}); "
                    "rename all but one, or choose another name with --project"
                )
            known_id = matches[0] if matches else None
        if known_id is not None:
            existing = self.project(known_id)
            return ProjectRef(
                known_id,
                title,
                created=False,
                label_config=str(existing["label_config"]),
                sampling=str(existing["sampling"]),
            )
        project = self._call(
            "create the project",
            lambda: self._sdk.projects.create(
                title=title,
                label_config=label_config,
                sampling=UNCERTAINTY_SAMPLING,
                expert_instruction=instructions,
                show_instruction=bool(instructions),
            ),
            creates=True,
        )
        return ProjectRef(
            int(project.id or 0),
            title,
            created=True,
            label_config=label_config,
            sampling=UNCERTAINTY_SAMPLING,
        )

    def project(self, project_id: int) -> dict[str, Any]:
        """The project's settings as a plain dict."""
        project = self._call("read the project", lambda: self._sdk.projects.get(id=project_id))
        return project.model_dump()

    def set_label_config(self, project_id: int, label_config: str) -> None:
        """Replace the project's labelling config.

        Raises:
            LabelStudioError: if Label Studio refuses it (e.g. existing annotations use labels it drops).
        """
        self._call(
            "change the project's labelling config",
            lambda: self._sdk.projects.update(id=project_id, label_config=label_config),
        )

    def set_instructions(self, project_id: int, instructions: str) -> None:
        """Set the annotators' instructions (HTML) and show them before labelling."""
        self._call(
            "set the project's instructions",
            lambda: self._sdk.projects.update(
                id=project_id, expert_instruction=instructions, show_instruction=True
            ),
        )

    # storage and tasks --------------------------------------------------------

    def ensure_local_storage(self, project_id: int, path: Path) -> int:
        """Grant the project access to display tiles under ``path`` (local files storage, never synced)."""
        local = self._sdk.import_storage.local
        existing = self._call("list local storages", lambda: local.list(project=project_id))
        for storage in existing:
            if storage.path and Path(storage.path) == path:
                return int(storage.id or 0)
        storage = self._call(
            "create the local files storage (is LOCAL_FILES_DOCUMENT_ROOT a parent of the tiles folder?)",
            lambda: local.create(
                project=project_id,
                path=str(path),
                title="geolabel display tiles",
                regex_filter=NO_SYNC_REGEX,
                use_blob_urls=True,
                recursive_scan=True,
            ),
            creates=True,
        )
        return int(storage.id or 0)

    def tasks(self, project_id: int) -> list[TaskState]:
        """Every task of a project with the tile it shows and its annotation count."""
        rows = self._task_rows(
            project_id, "task_only", "id,data,total_annotations", "list the project's tasks"
        )
        return [TaskState(int(t.id or 0), _tile_id(t.data), int(t.total_annotations or 0)) for t in rows]

    def delete_tasks(self, project_id: int, task_ids: Sequence[int], batch: int = IMPORT_BATCH) -> int:
        """Delete tasks of a project (with their annotations and predictions) in batches; return how many.

        Task ids that no longer exist are ignored, so an interrupted deletion can simply be run again.
        """
        ids = sorted({int(t) for t in task_ids})
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            self._call(
                "delete tasks",
                lambda chunk=chunk: self._sdk.actions.create(  # type: ignore[misc]
                    id="delete_tasks", project=project_id, selected_items={"all": False, "included": chunk}
                ),
            )
        return len(ids)

    def _task_rows(self, project_id: int, fields: str, include: str, what: str) -> list[Any]:
        """Every task of a project, all pages, with the ``include`` fields."""

        def fetch() -> list[Any]:
            pager: Any = self._sdk.tasks.list(
                project=project_id, page_size=PAGE_SIZE, fields=fields, include=include
            )
            return list(pager)

        return self._call(what, fetch)

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Create ``tasks`` (each ``{"data": {...}}``) in one request; return their ids in order.

        Raises:
            LabelStudioError: if the server does not return one id per task.
        """
        if not tasks:
            return []
        response = self._call(
            "import tasks",
            lambda: self._sdk.projects.import_tasks(
                id=project_id,
                request=cast(list[ImportApiRequest], list(tasks)),
                return_task_ids=True,
                commit_to_project=True,
            ),
            creates=True,
        )
        ids = [int(i) for i in (getattr(response, "task_ids", None) or [])]
        if len(ids) != len(tasks):
            raise LabelStudioError(f"Label Studio returned {len(ids)} task ids for {len(tasks)} tasks")
        return ids

    def task(self, task_id: int) -> dict[str, Any]:
        """One task as a plain dict."""
        return self._call("read the task", lambda: self._sdk.tasks.get(id=str(task_id))).model_dump()

    def create_annotation(
        self, task_id: int, result: Iterable[dict[str, Any]], cancelled: bool = False
    ) -> int:
        """Create an annotation with ``result`` regions on a task (``cancelled``: a skip); return its id."""
        annotation = self._call(
            "create the annotation",
            lambda: self._sdk.annotations.create(id=task_id, result=list(result), was_cancelled=cancelled),
            creates=True,
        )
        return int(annotation.id or 0)

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        """Every annotation of a task as plain dicts."""
        items = self._call("list annotations", lambda: self._sdk.annotations.list(id=task_id))
        return [a.model_dump() for a in items]

    # ML backend ---------------------------------------------------------------

    def connect_ml_backend(
        self, project_id: int, url: str, title: str, username: str, password: str
    ) -> MLBackendRef:
        """Connect (or re-connect) the ML backend at ``url`` to a project, interactive and with basic auth.

        Also gives the backend's webhook the same basic-auth header (Label Studio creates it without)
        and limits it to annotation events, and turns on "use predictions to pre-label" so a task opened
        without predictions asks the backend.

        Raises:
            LabelStudioError: if Label Studio cannot reach the backend or refuses the settings.
        """
        ml = self._sdk.ml
        url = url.rstrip("/")
        settings: dict[str, Any] = {
            "url": url,
            "title": title,
            "is_interactive": True,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": username,
            "basic_auth_pass": password,
        }
        existing = self._call("list ML backends", lambda: list(ml.list(project=project_id)))
        same = [b for b in existing if str(b.url or "").rstrip("/") == url]
        what = "connect the ML backend (does Label Studio reach it at ml_backend.url?)"
        if same:
            backend = self._call(
                what, lambda: ml.update(id=int(same[0].id or 0), project=project_id, **settings)
            )
        else:
            backend = self._call(what, lambda: ml.create(project=project_id, **settings), creates=True)
        self._authorize_webhook(project_id, f"{url}/webhook", _basic_header(username, password))
        self._call(
            "turn on pre-annotations",
            lambda: self._sdk.projects.update(
                id=project_id, show_collab_predictions=True, evaluate_predictions_automatically=False
            ),
        )
        return MLBackendRef(int(backend.id or 0), url, str(backend.state or ""))

    def _authorize_webhook(self, project_id: int, url: str, authorization: str) -> None:
        hooks = self._sdk.webhooks
        existing = self._call("list webhooks", lambda: list(hooks.list(project=str(project_id))))
        settings: dict[str, Any] = {
            "url": url,
            "headers": {"Authorization": authorization},
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": list(ANNOTATION_ACTIONS),
            "is_active": True,
        }
        match = [h for h in existing if str(h.url or "").rstrip("/") == url]
        if match:
            self._call(
                "set the ML webhook's auth header", lambda: hooks.update(id=int(match[0].id or 0), **settings)
            )
        else:
            self._call(
                "create the ML webhook", lambda: hooks.create(project=project_id, **settings), creates=True
            )

    def set_model_version(self, project_id: int, version: str) -> None:
        """Make ``version`` the project's model version: uncertainty sampling only ranks its predictions.

        Label Studio refuses a version that no prediction or ML backend carries yet.
        """
        self._call(
            f"set the project's model version to {version!r}",
            lambda: self._sdk.projects.update(id=project_id, model_version=version),
        )

    def ml_backend(self, backend_id: int) -> MLBackendRef:
        """State of a connected ML backend (Label Studio re-checks its health)."""
        backend = self._call("read the ML backend", lambda: self._sdk.ml.get(id=backend_id))
        return MLBackendRef(int(backend.id or 0), str(backend.url or ""), str(backend.state or ""))

    def interactive(self, backend_id: int, task_id: int, context: dict[str, Any]) -> dict[str, Any]:
        """Ask Label Studio for an interactive prediction (what a smart-tool click does); return its data."""
        return self._call(
            "run an interactive prediction",
            lambda: self._raw_post(
                f"/api/ml/{backend_id}/interactive-annotating", {"task": task_id, "context": context}
            ),
        )

    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int]) -> None:
        """Run the ``retrieve_tasks_predictions`` action: Label Studio asks the backend for these tasks."""
        self._call(
            "retrieve predictions",
            lambda: self._sdk.actions.create(
                id="retrieve_tasks_predictions",
                project=project_id,
                selected_items={"all": False, "included": list(task_ids)},
            ),
            creates=True,
        )

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        """Every prediction of a task as plain dicts."""
        items = self._call("list predictions", lambda: self._sdk.predictions.list(task=task_id))
        return [p.model_dump() for p in items]

    def delete_predictions(self, project_id: int, model_version: str) -> int:
        """Delete every prediction of ``model_version`` in a project (a re-import replaces its own); how many.

        One request (the project's model-versions endpoint); other versions' predictions (the trainer's
        rounds, another import) are kept. When ``model_version`` is the project's model version, Label
        Studio clears that setting: set it again (:meth:`set_model_version`) after pushing new predictions.
        """
        answer = self._call(
            f"delete the predictions of model version {model_version!r}",
            lambda: self._raw_request(
                "DELETE", f"/api/projects/{project_id}/model-versions/", {"model_version": model_version}
            ),
        )
        return int(answer.get("deleted_predictions") or 0)

    def labelled_tasks(self, project_id: int) -> list[LabelledTask]:
        """Every task with at least one annotation (submitted or skipped), parsed.

        The task listing only names annotation ids, so each labelled task is read in full. The task's own
        ``annotations`` are used: they include cancelled ones (skips), which the annotation list leaves out,
        and name each author with their e-mail.
        """
        rows = self._task_rows(
            project_id, "task_only", "id,total_annotations,cancelled_annotations", "harvest annotations"
        )
        labelled = [
            int(t.id or 0) for t in rows if int(t.total_annotations or 0) or int(t.cancelled_annotations or 0)
        ]
        return [
            LabelledTask.model_validate({"id": task_id, "annotations": self.task(task_id).get("annotations")})
            for task_id in labelled
        ]

    def import_predictions(
        self, project_id: int, predictions: Sequence[dict[str, Any]], batch: int = 200
    ) -> int:
        """Add predictions (task, result, score, model_version each) in batches; return how many."""
        for start in range(0, len(predictions), batch):
            chunk = list(predictions[start : start + batch])
            self._call(
                "import predictions",
                lambda chunk=chunk: self._sdk.projects.import_predictions(  # type: ignore[misc]
                    id=project_id, request=cast(list[PredictionRequest], chunk)
                ),
                creates=True,
            )
        return len(predictions)

    def queue(self, project_id: int) -> list[QueuedTask]:
        """Unlabelled tasks in serving order: lowest prediction score first (uncertainty sampling), then id.

        Tasks without a prediction come after scored ones, by id, as Label Studio serves them.
        """
        rows = self._task_rows(
            project_id, "all", "id,data,total_annotations,predictions_score", "list the annotation queue"
        )
        tasks = [
            QueuedTask(int(t.id or 0), _tile_id(t.data), _score(getattr(t, "predictions_score", None)))
            for t in rows
            if not int(t.total_annotations or 0)
        ]
        return sorted(tasks, key=lambda t: (t.score is None, t.score or 0.0, t.task_id))

    def ensure_queue_view(self, project_id: int, title: str = QUEUE_VIEW_TITLE) -> int:
        """Keep a Data Manager tab listing the unlabelled tasks in the order a round serves them; its id.

        The tab (``title``) shows tasks not yet labelled, by the score of their current prediction,
        lowest first: the round's batch at the top in pick order (:mod:`trainer.serving`), then the other
        scored tasks, then those without a prediction of the project's model version. Its filter and order
        are set again on each call; its other settings (columns, widths) are kept. A project without tabs
        first gets Label Studio's own "Default" tab (every task), which the Data Manager would otherwise
        never add once this one exists.

        Raises:
            LabelStudioError: if Label Studio refuses to list, create or change the project's tabs.
        """
        return self._keep_view(project_id, title, QUEUE_VIEW_FILTERS, QUEUE_VIEW_ORDERING)

    def ensure_review_view(
        self, project_id: int, task_ids: Sequence[int], title: str = REVIEW_VIEW_TITLE
    ) -> int:
        """Keep a Data Manager tab listing exactly the tasks ``task_ids`` (by id); return its id.

        The tab's filter is replaced on each call (an empty ``task_ids`` lists no task); its other
        settings are kept, as :meth:`ensure_queue_view` does.

        Raises:
            LabelStudioError: if Label Studio refuses to list, create or change the project's tabs.
        """
        return self._keep_view(project_id, title, review_filters(task_ids), ["tasks:id"])

    def _keep_view(self, project_id: int, title: str, filters: dict[str, Any], ordering: list[str]) -> int:
        """Create or update the Data Manager tab ``title`` with ``filters`` and ``ordering``; its id."""
        views = self._call(
            "list the project's Data Manager tabs", lambda: self._sdk.views.list(project=project_id)
        )
        mine = [v for v in views if isinstance(v.data, dict) and v.data.get("title") == title]
        if not views:  # Label Studio adds its "Default" tab (every task) only to a project without tabs
            self._call(
                "add the Data Manager's Default tab",
                lambda: self._raw_request(
                    "POST", "/api/dm/views/", {"project": project_id, "data": DEFAULT_VIEW}
                ),
                creates=True,
            )
        data = {**(mine[0].data if mine else {"type": "list", "target": "tasks"}), "title": title}
        data.update(filters=filters, ordering=ordering)
        body = {"project": project_id, "data": data}
        if mine:
            path, method, creates = f"/api/dm/views/{mine[0].id}/", "PATCH", False
        else:
            path, method, creates = "/api/dm/views/", "POST", True
        view = self._call(
            f"keep the Data Manager tab {title!r}",
            lambda: self._raw_request(method, path, body),
            creates=creates,
        )
        return int(view.get("id") or 0)

    def reopen_tasks(self, project_id: int, overlaps: Mapping[int, int], first: bool = True) -> None:
        """Put labelled tasks back in the queue until ``overlaps[task]`` distinct people labelled each.

        Label Studio serves a task until as many distinct annotators as its ``overlap`` submitted it, and
        never to one who already did: raising a task's overlap above its annotators (and marking it not
        labelled, as Label Studio then counts it) sends it to another annotator. ``first``: turn on the
        project's "show tasks with overlap first", so those tasks come before the rest of the queue.
        Label Studio resets every task's overlap when someone changes the project's "annotations per
        task", which undoes this.

        Raises:
            LabelStudioError: if Label Studio refuses a change.
        """
        for task_id, overlap in sorted(overlaps.items()):
            self._call(
                f"put task {task_id} back in the labelling queue",
                lambda task_id=task_id, overlap=overlap: self._raw_request(  # type: ignore[misc]
                    "PATCH", f"/api/tasks/{task_id}/", {"overlap": overlap, "is_labeled": False}
                ),
            )
        if first and overlaps:
            self._call(
                "serve tasks with overlap first",
                lambda: self._sdk.projects.update(id=project_id, show_overlap_first=True),
            )

    def _raw_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._raw_request("POST", path, body)

    def _raw_request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON request the SDK's typed models cannot carry (e.g. a tab's filters); its JSON answer."""
        response = self._sdk._client_wrapper.httpx_client.request(path, method=method, json=body)
        if response.status_code >= 400:
            raise ApiError(
                status_code=response.status_code, body=response.text, headers=dict(response.headers)
            )
        data = response.json()
        return data if isinstance(data, dict) else {"data": data}


def client_for(config: Config) -> LabelStudioClient:
    """A client for the configured Label Studio: the configured token, else the local server's own."""
    token = config.token()
    if not token:
        creds = read_credentials(config.data_dir / "label-studio")
        token = creds.token if creds else ""
    return LabelStudioClient(config.label_studio.url, token)


def review_filters(task_ids: Sequence[int]) -> dict[str, Any]:
    """A Data Manager filter listing exactly ``task_ids`` (none: no task, as ids start at 1)."""
    ids = sorted({int(t) for t in task_ids}) or [0]
    items = [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": i} for i in ids]
    return {"conjunction": "or", "items": items}


def _transient(exc: Exception, creates: bool) -> bool:
    """True when trying again may help: no connection, a timeout or reset, HTTP 502/503/504.

    A call that creates something (``creates``) is only tried again when it cannot have been carried out.
    """
    if isinstance(exc, ApiError):
        return exc.status_code in (NOT_DONE_STATUS if creates else TRANSIENT_STATUS)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return isinstance(exc, httpx.TransportError) and not creates


def _reason(exc: Exception) -> str:
    """A failure in a few words, without the request (its headers hold the token)."""
    return f"HTTP {exc.status_code}" if isinstance(exc, ApiError) else type(exc).__name__


def _basic_header(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


def _score(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _tile_id(data: object) -> str | None:
    if isinstance(data, dict):
        value = data.get("tile_id")
        return str(value) if value is not None else None
    return None
