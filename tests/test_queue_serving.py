"""Label Studio serves a round's selected batch first, in pick order, to one annotator and to a team.

The serving scores are checked as values, then against the real Label Studio: a round whose selection
is forced to contradict the confidence order (the most *confident* tiles, most confident first), then
two organisation members asking for their next task, as the Data Manager's "Label All Tasks" asks.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from geolabel.errors import LabelStudioUnreachableError
from geolabel.lsclient import QUEUE_VIEW_TITLE, LabelStudioClient
from georef.labelstudio import brush_result
from georef.registry import TileRecord
from tests.conftest import LabelStudioServer, free_port, import_scene
from trainer.batch import TileOutcome
from trainer.loop import Retry, run_round
from trainer.rounds import QueueEntry, RoundStatus, RoundStore
from trainer.serving import SERVING_FLOOR, batch_score, keep_queue_view, served_score, serving_scores

pytestmark = pytest.mark.labelstudio
_people = itertools.count()


# serving scores ---------------------------------------------------------------------------------


def test_the_batch_scores_below_every_other_tile_in_pick_order() -> None:
    confidence = [0.9, 0.2, 0.6, 0.05, 0.4, 0.8]
    picks = [5, 0, 3]  # the diverse batch: not the confidence order
    served = serving_scores(confidence, picks)
    others = [i for i in range(len(confidence)) if i not in picks]
    assert [served[i] for i in others] == [confidence[i] for i in others]  # the others keep their own
    assert [served[i] for i in picks] == [0.0, SERVING_FLOOR / 3, 2 * SERVING_FLOOR / 3]
    assert [served[i] for i in picks] == [batch_score(r, 3) for r in range(3)]
    assert sorted(range(len(confidence)), key=served.__getitem__) == [*picks, 1, 4, 2]


@pytest.mark.parametrize("seed", range(20))
def test_any_batch_is_served_first_in_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 40))
    confidence = rng.random(count).round(int(rng.integers(1, 4))).tolist()  # ties and zeros happen
    picks = rng.permutation(count)[: int(rng.integers(0, count + 1))].tolist()
    served = serving_scores(confidence, picks)
    assert all(0.0 <= s <= 1.0 for s in served)
    lowest_other = min((s for i, s in enumerate(served) if i not in picks), default=1.0)
    batch = [served[i] for i in picks]
    assert batch == sorted(set(batch))  # strictly increasing with the rank
    assert all(s < lowest_other for s in batch)


def test_a_maximally_uncertain_tile_outside_the_batch_leaves_room_below_it() -> None:
    served = serving_scores([0.0, 0.3, 0.0, 1.0], [1, 3])
    assert served == [SERVING_FLOOR, 0.0, SERVING_FLOOR, SERVING_FLOOR / 2]


def test_the_served_score_of_a_tile_follows_from_the_round_record_alone() -> None:
    """What the ML backend needs to give a stored prediction the score the round pushed with it."""
    assert served_score(0.42, None, 16) == 0.42
    assert served_score(0.42, 5, 16) == serving_scores([0.9] * 5 + [0.42] + [0.9] * 10, list(range(16)))[5]
    with pytest.raises(ValueError, match="rank 16 is not one of a batch of 16 tiles"):
        served_score(0.42, 16, 16)


@pytest.mark.parametrize(
    ("confidence", "picks", "message"),
    [
        ([0.5, 0.5], [1, 1], "names a tile twice"),
        ([0.5, 0.5], [2], "pick 2 is not one of the 2 scored tiles"),
        ([0.5, 1.5], [0], "confidence must lie in 0..1"),
    ],
)
def test_a_wrong_batch_is_refused(confidence: list[float], picks: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        serving_scores(confidence, picks)


# Label Studio ------------------------------------------------------------------------------------


def sign_up(label_studio: LabelStudioServer) -> tuple[str, str]:
    """A new member of the organisation, signed up with its invite link as a person does; (e-mail, token)."""
    email = f"annotator{next(_people)}@geolabel.test"
    admin = {"Authorization": f"Token {label_studio.token}"}
    invite = httpx.get(f"{label_studio.url}/api/invite", headers=admin, timeout=60).json()["token"]
    with httpx.Client(base_url=label_studio.url, timeout=60) as browser:
        page = f"/user/signup/?token={invite}"
        browser.get(page)
        form = {
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            "email": email,
            "password": "pw-12345678",
        }
        signed = browser.post(page, data=form, headers={"Referer": label_studio.url + page})
        assert signed.status_code == 302, signed.text[:300]  # to the projects: signed up and logged in
        return email, str(browser.get("/api/current-user/token").json()["token"])


def next_task(
    url: str, token: str, project_id: int, body: dict[str, object] | None = None
) -> tuple[int, str]:
    """The task the Data Manager's label stream opens next for this user (and locks for them), and why.

    ``body``: what the Data Manager sends: nothing for "Label All Tasks" (nothing selected), the tab's
    filters and ordering for "Label Tasks As Displayed".
    """
    answer = httpx.post(
        f"{url}/api/dm/actions",
        params={"id": "next_task", "project": project_id},
        json=body or {},
        headers={"Authorization": f"Token {token}"},
        timeout=60,
    )
    answer.raise_for_status()
    return int(answer.json()["id"]), str(answer.json()["queue"])


def most_confident_first(
    candidates: Sequence[TileOutcome], _labelled: object, size: int, *_: object
) -> list[int]:
    """A selection Label Studio's confidence order would serve last of all, backwards."""
    return [int(i) for i in np.argsort([c.uncertainty for c in candidates], kind="stable")[:size]]


@dataclass(frozen=True)
class Served:
    """A project after one round: its batch as recorded, the other scored tasks by confidence, a team."""

    client: LabelStudioClient
    url: str
    project_id: int
    version: str
    batch: list[QueueEntry]
    others: list[int]  # task ids outside the batch, least confident first
    confidence: dict[int, float]  # by task id, as the round recorded it
    admin: str
    annotator: str
    annotator_email: str


@pytest.fixture(scope="module")
def served(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """8 tiles, 3 labelled; one round of 1 epoch picks 3 of the 5 others, most confident first."""
    rng = np.random.default_rng(5)
    truth = np.zeros((512, 1024), dtype=np.uint8)
    truth[40:120, 60:200] = truth[300:420, 500:640] = truth[100:200, 800:1000] = 1
    image = np.clip(rng.normal(60, 25, (3, 512, 1024)) + 150 * truth, 0, 255).astype(np.uint8)
    trainer: dict[str, object] = {"epochs": 1, "batch_size": 4, "batch": 3}
    raster = tmp_path_factory.mktemp("serving") / "scene.tif"
    scene = import_scene(label_studio, raster, image, "serving project", overlap=0, trainer=trainer)
    client = label_studio.client()
    for tile in scene.tiles[:3]:
        w = tile.window
        mask = truth[w.row_off : w.row_end, w.col_off : w.col_end] == 1
        regions = [brush_result(mask, "building", "label_brush", "image")] if mask.any() else []
        client.create_annotation(_task(tile), regions)  # nothing drawn: all background
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trainer.loop.select_next", most_confident_first)
        record = run_round(scene.config, client, retry=Retry(2, 0.01))
    assert record.status == RoundStatus.PROMOTED, record.error
    assert record.labelled_tiles == 3
    with RoundStore(scene.config.registry_path) as rounds:
        batch = rounds.queue(record.id)
        states = rounds.tile_states(record.id)
    by_tile = {t.id: _task(t) for t in scene.tiles}
    confidence = {
        by_tile[t]: 1 - (s.uncertainty or 0.0) for t, s in states.items() if s.uncertainty is not None
    }
    picked = {e.task_id for e in batch}
    others = sorted((t for t in confidence if t not in picked), key=lambda t: (confidence[t], t))
    email, annotator = sign_up(label_studio)
    return Served(client, label_studio.url, scene.report.project_id, str(record.model_version), batch, others,
                  confidence, label_studio.token, annotator, email)  # fmt: skip


def _task(tile: TileRecord) -> int:
    return int(tile.task_id or 0)


def test_the_round_pushes_serving_scores_and_records_true_confidence(served: Served) -> None:
    batch = served.batch
    assert (len(batch), len(served.others)) == (3, 2)
    assert [e.confidence for e in batch] == sorted((e.confidence for e in batch), reverse=True)  # as forced
    assert max(served.confidence[t] for t in served.others) <= min(e.confidence for e in batch)  # by
    # confidence alone, Label Studio would serve this batch last, its first tile last of all
    assert all(e.confidence == pytest.approx(1 - e.uncertainty) for e in batch)  # the record keeps the truth
    assert {e.task_id: e.confidence for e in batch} == pytest.approx({e.task_id: served.confidence[e.task_id]
                                                                      for e in batch})  # fmt: skip
    score = {}
    for task in [*(e.task_id for e in batch), *served.others]:
        (prediction,) = [p for p in served.client.predictions(task) if p["model_version"] == served.version]
        score[task] = prediction["score"]
    for task in served.others:
        assert score[task] == pytest.approx(served.confidence[task])  # pushed with its confidence
    assert [score[e.task_id] for e in batch] == [batch_score(e.rank, 3) for e in batch]  # below them all


def test_the_data_manager_tab_lists_and_serves_the_batch_first(
    served: Served, label_studio: LabelStudioServer
) -> None:
    url, project, admin = served.url, served.project_id, served.admin
    headers = {"Authorization": f"Token {admin}"}
    views = httpx.get(f"{url}/api/dm/views/", params={"project": project}, headers=headers, timeout=60).json()
    (tab,) = [v for v in views if v["data"].get("title") == QUEUE_VIEW_TITLE]
    assert [v["data"]["title"] for v in views] == ["Default", QUEUE_VIEW_TITLE]  # every task still listed
    (default,) = [v for v in views if v["data"]["title"] == "Default"]
    everything = httpx.get(f"{url}/api/tasks/", params={"project": project, "view": default["id"]},
                           headers=headers, timeout=60).json()["total"]  # fmt: skip
    assert everything == len(served.client.tasks(project))
    listed = httpx.get(f"{url}/api/tasks/", params={"project": project, "view": tab["id"]}, headers=headers,
                       timeout=60).json()["tasks"]  # fmt: skip
    unlabelled = [t for t in [*(e.task_id for e in served.batch), *served.others] if t in _open(served)]
    assert [t["id"] for t in listed] == unlabelled  # in serving order, labelled tiles hidden
    as_displayed = {"ordering": tab["data"]["ordering"], "filters": tab["data"]["filters"]}
    assert next_task(url, admin, project, as_displayed) == (unlabelled[0], "Data manager queue")
    # Label Studio's own limit, which the README states: "as displayed" ignores the others' locks
    _, newcomer = sign_up(label_studio)
    assert next_task(url, newcomer, project, as_displayed)[0] == unlabelled[0]
    assert served.client.ensure_queue_view(project) == tab["id"]  # kept, not duplicated


def _open(served: Served) -> set[int]:
    return {t.task_id for t in served.client.tasks(served.project_id) if t.annotations == 0}


def test_a_team_is_served_the_batch_first_in_pick_order(served: Served) -> None:
    """Two organisation members ask at once: each gets the next rank nobody holds, not a random task."""
    url, project, admin, annotator = served.url, served.project_id, served.admin, served.annotator
    members = httpx.get(f"{url}/api/users/", headers={"Authorization": f"Token {admin}"}, timeout=60).json()
    assert served.annotator_email in {m["email"] for m in members}  # two members of one organisation
    first, second, third = (e.task_id for e in served.batch)
    assert next_task(url, admin, project)[0] == first  # the admin may hold it already (the tab's test)
    assert next_task(url, annotator, project) == (second, "Active learning or random queue")
    assert next_task(url, admin, project) == (first, "Task lock")  # asking again: still one's own
    alone = httpx.get(f"{url}/api/projects/{project}/next", headers={"Authorization": f"Token {annotator}"},
                      timeout=60)  # fmt: skip
    assert alone.json()["id"] == second  # the project's own next-task endpoint agrees
    LabelStudioClient(url, annotator).create_annotation(second, [])
    served.client.create_annotation(first, [])
    assert next_task(url, annotator, project)[0] == third
    assert next_task(url, admin, project)[0] == served.others[0]  # the batch is taken: by confidence
    LabelStudioClient(url, annotator).create_annotation(third, [])
    assert next_task(url, annotator, project)[0] == served.others[1]  # others[0] is the admin's


def test_one_annotator_walks_the_batch_in_order_whatever_older_rounds_scored(
    label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    """Uncertainty sampling by serving scores alone: a previous version's lower scores do not interfere."""
    config = (
        '<View><Image name="image" value="$image"/>'
        '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
    )
    project = client.ensure_project(f"serving alone {next(_people)}", config).id
    tasks = client.import_tasks(project, [{"data": {"image": f"/tiles/{i}.png"}} for i in range(7)])
    confidence = [0.9, 0.5, 0.3, 0.05, 0.1, 0.7, 0.6]
    picks = [5, 0, 2]  # neither by confidence nor by task id
    old = [{"task": tasks[i], "result": [], "score": 0.0, "model_version": "round 1"} for i in (1, 6)]
    served = serving_scores(confidence, picks)
    new = [
        {"task": t, "result": [], "score": s, "model_version": "round 2"}
        for t, s in zip(tasks, served, strict=True)
    ]
    client.import_predictions(project, old + new)
    client.set_model_version(project, "round 2")
    order = []
    for _ in tasks:
        task, _queue = next_task(label_studio.url, label_studio.token, project)
        order.append(task)
        client.create_annotation(task, [])
    assert order == [tasks[i] for i in [*picks, 3, 4, 1, 6]]


def test_a_refused_tab_is_a_problem_of_the_round_and_no_label_studio_its_failure(
    label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    problem = keep_queue_view(client, 999_999)  # no such project: Label Studio refuses the tab
    assert problem is not None
    assert problem.startswith(f"the Data Manager tab {QUEUE_VIEW_TITLE!r} was not kept up to date")
    dead = LabelStudioClient(f"http://127.0.0.1:{free_port()}", label_studio.token)
    with pytest.raises(LabelStudioUnreachableError):
        keep_queue_view(dead, 1)
