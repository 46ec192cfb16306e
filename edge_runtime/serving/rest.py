"""The REST side of the Open Inference Protocol (`/v2/...`) on aiohttp, with the binary
tensor data extension that stock clients use by default. Handlers convert, call the
data plane and convert back; InferenceError becomes the matching HTTP status here.
Every path but the liveness and readiness checks is authenticated (serving/admission.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from edgefleet.edge_runtime.engine import PLATFORM, InferRequest
from edgefleet.edge_runtime.errors import ErrorCode, InferenceError
from edgefleet.edge_runtime.serving import converters
from edgefleet.edge_runtime.serving.admission import Admission
from edgefleet.edge_runtime.serving.dataplane import DataPlane

logger = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
# Probes may ask these without credentials; they say nothing about models or data.
LIVE, READY = "/v2/health/live", "/v2/health/ready"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    headers = ({hdrs.WWW_AUTHENTICATE: "Bearer"}
               if status == ErrorCode.UNAUTHENTICATED.http_status else None)
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where InferenceError becomes an HTTP status; every error is JSON."""
    try:
        return await handler(request)
    except InferenceError as error:
        return _error(error.code.http_status, error.message)
    except web.HTTPException as error:  # 404 route, 405, 413 from aiohttp itself
        return _error(error.status, error.reason)
    except Exception:
        logger.exception("unexpected error in %s %s", request.method, request.path)
        return _error(500, "internal error; see the runtime log")


def _version(request: web.Request) -> str | None:
    return request.match_info.get("version") or None


def health_routes(dataplane: DataPlane) -> list[web.RouteDef]:
    """The liveness and readiness checks: on the REST port, and on the metrics port,
    which stays plain HTTP when the inference ports need TLS client certificates."""
    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": dataplane.live()})

    async def ready(_: web.Request) -> web.Response:
        is_ready = dataplane.ready()
        return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)

    return [web.get(LIVE, live), web.get(READY, ready)]


def create_app(dataplane: DataPlane, admission: Admission) -> web.Application:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in (LIVE, READY):
            admission.authenticate(request.headers.get(hdrs.AUTHORIZATION))
        return await handler(request)

    async def server_metadata(_: web.Request) -> web.Response:
        metadata = dataplane.server_metadata()
        return web.json_response({"name": metadata.name, "version": metadata.version,
                                  "extensions": metadata.extensions})

    async def model_metadata(request: web.Request) -> web.Response:
        metadata = dataplane.model_metadata(request.match_info["model"], _version(request))
        return web.json_response(converters.metadata_to_json(metadata))

    async def model_ready(request: web.Request) -> web.Response:
        is_ready = dataplane.model_ready(request.match_info["model"], _version(request))
        return web.json_response({"name": request.match_info["model"], "ready": is_ready},
                                 status=200 if is_ready else 400)

    async def infer(request: web.Request) -> web.Response:
        model, version = request.match_info["model"], _version(request)
        with admission.slot():
            # Content-Length first: a body known to be too large is never read.
            admission.check_size(request.content_length or 0)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body, past the limit
                raise admission.too_large("a chunked body") from None
            started = time.perf_counter()
            try:
                decoded, all_binary, binary_outputs = await admission.decode(
                    len(body), _decode, model, version, body, request.headers.get(HEADER_LENGTH))
            except InferenceError as error:
                dataplane.count_failure(model, version, error)
                raise
            response = await dataplane.infer(decoded, started)
        header, tail = converters.infer_response_to_json(response, all_binary, binary_outputs)
        if not tail:
            return web.Response(body=header, content_type="application/json")
        return web.Response(body=header + tail, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(header))})

    async def model_config(request: web.Request) -> web.Response:
        config = dataplane.model_configuration(request.match_info["model"], _version(request))
        return web.json_response(converters.config_to_json(config, PLATFORM))

    async def model_statistics(request: web.Request) -> web.Response:
        versions = dataplane.model_statistics(request.match_info.get("model", ""),
                                              _version(request))
        return web.json_response(converters.statistics_to_json(versions))

    async def repository_index(request: web.Request) -> web.Response:
        ready_only = converters.index_request_from_json(await request.read())
        entries = await dataplane.repository_index(ready_only)
        return web.json_response(converters.index_to_json(entries))

    async def repository_load(request: web.Request) -> web.Response:
        parameters = converters.repository_parameters_from_json(await request.read())
        await dataplane.load_model(request.match_info["model"], parameters)
        return web.json_response({})

    async def repository_unload(request: web.Request) -> web.Response:
        parameters = converters.repository_parameters_from_json(await request.read())
        await dataplane.unload_model(request.match_info["model"], parameters)
        return web.json_response({})

    async def feedback(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        request_id, labels = converters.feedback_from_json(await request.read())
        result = dataplane.feedback(model, request_id, labels)
        return web.json_response({"model_name": result.model, "model_version": result.version,
                                  "id": result.id, "labelled": result.labelled,
                                  "correct": result.correct})

    app = web.Application(client_max_size=admission.max_request_bytes,
                          middlewares=[errors_as_json, authenticate])
    # Before /v2/models/{model}: as in Triton, a model named "stats" has no metadata route.
    app.router.add_get("/v2/models/stats", model_statistics)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(f"{prefix}/ready", model_ready)
        app.router.add_post(f"{prefix}/infer", infer)
        app.router.add_get(f"{prefix}/config", model_config)
        app.router.add_get(f"{prefix}/stats", model_statistics)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", repository_load)
    app.router.add_post("/v2/repository/models/{model}/unload", repository_unload)
    app.router.add_post("/v2/models/{model}/feedback", feedback)
    app.router.add_routes(health_routes(dataplane))
    app.router.add_get("/v2", server_metadata)
    return app


def _decode(model: str, version: str | None, body: bytes,
            header_length: str | None) -> tuple[InferRequest, bool, set[str]]:
    header, binary = _split_body(body, header_length)
    return converters.infer_request_from_json(model, version, header, binary)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InferenceError.invalid(
            f"{HEADER_LENGTH} is {header_length!r}; the body has {len(body)} bytes")
    return body[:length], body[length:]

