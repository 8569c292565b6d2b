"""The gateway's HTTP application (FastAPI): routes, API-key checks, and every error in the OpenAI
error format (unknown paths and methods included).

  POST /v1/completions, POST /v1/chat/completions   generation (serving.py)     key required
  GET  /v1/models, GET /v1/models/{model}            the deployment's model      key required
  GET  /metrics                                      Prometheus text format      key required
  GET  /health                                       broker and workers (health.py), no key
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from tsslurm import __version__
from tsslurm.gateway import responses, serving
from tsslurm.gateway.errors import ApiError, bad_request, internal, not_found, unknown_model
from tsslurm.gateway.metrics import CONTENT_TYPE
from tsslurm.gateway.service import Gateway

log = logging.getLogger("tsslurm.gateway")

MAX_BODY_BYTES = 8 << 20
"""Larger request bodies get 413 before they are read whole (a prompt that size cannot fit any
context anyway)."""


def create_app(gateway: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="tsslurm gateway", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    _errors(app, gateway)
    _generation_routes(app, gateway)
    _info_routes(app, gateway)
    return app


def _generation_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post(serving.COMPLETIONS)
    async def completions(request: Request) -> Response:
        gateway.authorize(request.headers.get("authorization"))
        return serving.completions(gateway, await _body(request))

    @app.post(serving.CHAT)
    async def chat_completions(request: Request) -> Response:
        gateway.authorize(request.headers.get("authorization"))
        return serving.chat_completions(gateway, await _body(request))


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        parts.append(part)
    return b"".join(parts)


def _too_large() -> ApiError:
    return ApiError(413, f"the request body exceeds {MAX_BODY_BYTES >> 20} MiB",
                    code="request_too_large")


def _info_routes(app: FastAPI, gateway: Gateway) -> None:
    limits = gateway.limits

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        gateway.authorize(request.headers.get("authorization"))
        return _json(responses.models(limits.model, gateway.created, limits.context_tokens))

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> Response:
        gateway.authorize(request.headers.get("authorization"))
        if model != limits.model:
            raise unknown_model(model, limits.model)
        card = responses.model_card(limits.model, gateway.created, limits.context_tokens)
        return JSONResponse(card)

    @app.get("/health")
    async def health() -> Response:
        report = await gateway.health.check()
        headers = {} if report.ok else {"retry-after": "5"}
        return JSONResponse(report.body(), status_code=200 if report.ok else 503,
                            headers=headers)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gateway.authorize(request.headers.get("authorization"))
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


def _errors(app: FastAPI, gateway: Gateway) -> None:
    def answer(request: Request, error: ApiError) -> Response:
        gateway.metrics.answered(request.url.path, error.status)
        return Response(error.json(), status_code=error.status, headers=error.headers(),
                        media_type="application/json")

    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return answer(request, error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            return answer(request, not_found(request.url.path))
        problem = ApiError(error.status_code, f"{request.method} {request.url.path}: "
                                              f"{error.detail}", code="method_not_allowed"
                           if error.status_code == 405 else None)
        return answer(request, problem)

    async def validation_error(request: Request, error: Exception) -> Response:
        return answer(request, bad_request(f"invalid request: {error}"))

    async def unexpected(request: Request, error: Exception) -> Response:
        log.error("unexpected error on %s", request.url.path, exc_info=error)
        return answer(request, internal(f"internal error: {type(error).__name__}: {error}"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")
