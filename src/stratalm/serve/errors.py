"""One error contract for every endpoint: the OpenAI body `{"error": {message, type, param, code}}`.

Every client mistake is a 400 (the `openai` client retries 408, 409, 429 and 5xx, so a bad request
answered with 500 would arrive three times); 401 for a missing or wrong key, 408 for a request
that ran past its time, 429 when the queue is full. FastAPI's own validation errors (422) become
400s that name the field."""
from __future__ import annotations

from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import StratalmError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
         503: "server_error"}


class APIError(Exception):
    """An answer that is an error: the HTTP status and the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param, code)


def _field_name(location: tuple) -> str:
    # ("body", "messages", 0, "role") -> "messages[0].role"; union members (str, list[int]) are dropped
    name = ""
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(part, int):
            name += f"[{part}]"
        elif "[" in str(part) or str(part).startswith(("function-", "list[", "str", "int", "float", "bool")):
            continue
        else:
            name += ("." if name else "") + str(part)
    return name or "body"


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem pydantic found, as one sentence that names the field."""
    first = exc.errors()[0]
    field, kind = _field_name(tuple(first.get("loc", ()))), first.get("type", "")
    if kind == "extra_forbidden":
        return bad_request(f"the field '{field}' is not supported by this server; remove it.", field,
                           "unsupported_field")
    if kind == "json_invalid":
        return bad_request("the request body is not valid JSON.", None, "invalid_json")
    if kind == "missing":
        return bad_request(f"the field '{field}' is required.", field, "missing_field")
    return bad_request(f"invalid value for '{field}': {first.get('msg', 'bad value')}.", field, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StratalmError)
    async def _stratalm(_: Request, exc: StratalmError):  # a library refusal is the client's input
        return bad_request(str(exc)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        status = exc.status_code if exc.status_code in TYPES else 400
        return APIError(status, str(exc.detail)).response()
