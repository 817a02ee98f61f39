"""Video generation as jobs, the vLLM-Omni (and OpenAI) way: `POST /v1/videos` creates a
job, `GET /v1/videos/{id}` polls it, `GET /v1/videos/{id}/content` downloads the clip,
`DELETE /v1/videos/{id}` removes it, `GET /v1/videos` lists jobs.

torpor passes these to the deployment's workers and keeps, per job, the key that created
it, the deployment and the worker that holds it (torpor.gateway.state): a poll needs no
`model` (the OpenAI SDK sends none), reaches the worker that runs the job, and another key
gets a 404. Every call is one usage record naming its route with the id left out
(`/v1/videos`, `/v1/videos/{video_id}`, `/v1/videos/{video_id}/content`); the generation's
GPU time is billed as the worker's uptime.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import orjson

from torpor.auth import ApiKey
from torpor.errors import BadRequest, Forbidden, NotFound, TorporError
from torpor.gateway.dispatch import BufferedResponse, Sink, UpstreamRequest
from torpor.gateway.state import VideoJob
from torpor.paths import check_route

if TYPE_CHECKING:
    from torpor.gateway.proxy import ProxyDeps

VIDEOS = "/v1/videos"
# Paths under /v1/videos that are not job ids.
_NOT_IDS = frozenset({"sync", "characters", "edits", "extensions"})
_WORKER_HEADER = b"x-torpor-worker"


class VideoJobStore(Protocol):
    async def record(self, job: VideoJob) -> None: ...

    async def get(self, video_id: str) -> VideoJob | None: ...

    async def ids_of(self, key_id: str, deployment: str) -> set[str]: ...

    async def forget(self, video_id: str) -> None: ...


@dataclass(frozen=True)
class VideoCall:
    """A request under /v1/videos as the proxy received it."""

    key: ApiKey
    # From the per-deployment base URL (`/openai/{deployment}/v1`), else None.
    deployment: str | None
    method: str
    route: str
    query: str
    headers: dict[str, str]
    body: bytes
    session_id: str | None
    arrived: float


def is_video_route(path: str) -> bool:
    return path == VIDEOS or path.startswith(VIDEOS + "/")


def video_target(method: str, route: str) -> tuple[str | None, str]:
    """(the job id the route names, or None; the route with the id left out)."""
    if route == VIDEOS:
        return None, VIDEOS
    rest = route[len(VIDEOS) + 1 :]
    head, _, tail = rest.partition("/")
    if not head:
        raise NotFound(f"Unknown route {route}")
    if head in _NOT_IDS:
        return None, route
    return head, f"{VIDEOS}/{{video_id}}" + (f"/{tail}" if tail else "")


def model_of(content_type: str, body: bytes, query: str) -> str | None:
    """The `model` field of a create request: multipart form (what the OpenAI SDK sends),
    url-encoded form, JSON, or the query string."""
    value: Any = None
    kind = content_type.split(";", 1)[0].strip().lower()
    if body and kind == "multipart/form-data":
        value = _form_field(content_type, body, "model")
    elif body and kind == "application/x-www-form-urlencoded":
        value = parse_qs(body.decode("latin-1")).get("model", [None])[0]
    elif body and kind in ("application/json", ""):
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Malformed JSON in request body: {exc}") from None
        value = payload.get("model") if isinstance(payload, dict) else None
    if value is None and query:
        value = parse_qs(query).get("model", [None])[0]
    return value if isinstance(value, str) and value else None


def _form_field(content_type: str, body: bytes, name: str) -> str | None:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("Malformed multipart/form-data body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode("utf-8", "replace")
    return None


def job_of_answer(data: bytes) -> str | None:
    """The id of the video job an engine's create answer describes."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("object", "video") != "video":
        return None
    job_id = body.get("id")
    return job_id if isinstance(job_id, str) and job_id else None


def _not_found(video_id: str) -> NotFound:
    return NotFound(f"No video job {video_id!r} for this API key")


async def serve_video(deps: ProxyDeps, jobs: VideoJobStore, call: VideoCall, out: Sink) -> None:
    key = call.key
    job_id, metered = video_target(call.method, call.route)
    job: VideoJob | None = None
    deployment = call.deployment
    if job_id is not None:
        job = await jobs.get(job_id)
        if job is None or (job.key_id != key.id and not key.admin):
            raise _not_found(job_id)
        if deployment is not None and deployment != job.deployment:
            raise _not_found(job_id)
        deployment = job.deployment
    elif deployment is None:
        deployment = model_of(call.headers.get("content-type", ""), call.body, call.query)
        if deployment is None:
            raise BadRequest(
                "'model' is required: name a deployment, or use the base URL "
                "/openai/<deployment>/v1"
            )
    if not key.may_use(deployment):
        raise Forbidden(f"This API key may not use deployment {deployment!r}")
    gate = deps.dispatcher.gate(deployment)
    routes = deps.routes_of(deployment) if deps.routes_of is not None else None
    if routes is not None:
        check_route(key, deployment, call.route, *routes)
    session = call.session_id
    if job is not None and job.worker_id is not None:
        if job.worker_id not in gate.routes:
            raise NotFound(
                f"Video job {job.id!r} ran on worker {job.worker_id}, which has stopped "
                "(scaled down or replaced); its result is gone: create the job again"
            )
        # The job lives in that worker: its polls and its download go there.
        session = f"video:{job.id}"
        gate.affinity[session] = job.worker_id
    request = UpstreamRequest(
        key=key,
        deployment=deployment,
        method=call.method,
        path=f"{call.route}?{call.query}" if call.query else call.route,
        body=call.body,
        headers=call.headers,
        stream=False,
        session_id=session,
        arrived=call.arrived,
        metered_route=metered,
    )
    listing = call.method == "GET" and call.route == VIDEOS
    if call.method == "POST" or (listing and not key.admin):
        buffered = BufferedResponse()
        await deps.dispatcher.dispatch(request, buffered)
        content = buffered.content
        if buffered.status in (200, 201, 202) and call.method == "POST":
            created = job_of_answer(content)
            if created is not None:
                worker = dict(buffered.headers).get(_WORKER_HEADER)
                await jobs.record(
                    VideoJob(created, key.id, deployment, worker.decode() if worker else None)
                )
        elif buffered.status == 200 and listing:
            content = _only(content, await jobs.ids_of(key.id, deployment))
        await out.full(buffered.status or 502, buffered.headers, content)
        return
    await deps.dispatcher.dispatch(request, out)
    if call.method == "DELETE" and job is not None and getattr(out, "status", 0) == 200:
        await jobs.forget(job.id)


def _only(data: bytes, ids: set[str]) -> bytes:
    """A job list with only the jobs in `ids` (another key's jobs are not listed)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise TorporError("The engine's video list is not JSON") from None
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise TorporError("The engine's video list has no 'data'")
    kept = [item for item in items if isinstance(item, dict) and item.get("id") in ids]
    body["data"] = kept
    body["first_id"] = kept[0]["id"] if kept else None
    body["last_id"] = kept[-1]["id"] if kept else None
    return orjson.dumps(body)
