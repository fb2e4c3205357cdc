"""`run_server`: the app on uvicorn with the serve.* header deadline, keep-alive timeout, connection cap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chaptering.serve.app import create_app
from chaptering.serve.limits import header_timeout_protocol

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings


def server_config(settings: Settings, app: Any, host: str | None = None, port: int | None = None,
                  log_level: str = "info") -> Any:
    """uvicorn's Config for `app` with the serve.* limits on slow and numerous clients."""
    import uvicorn

    serve = settings.serve
    return uvicorn.Config(
        app, host=host or serve.host, port=serve.port if port is None else port, log_level=log_level,
        http=header_timeout_protocol(serve.header_timeout_s), timeout_keep_alive=serve.keep_alive_s,
        limit_concurrency=serve.max_connections,  # h11's 16 KB bound on request line + headers stays
    )


def run_server(settings: Settings, host: str | None = None, port: int | None = None,
               model_spec: str = "champion") -> None:
    """`chaptering serve`: the app on uvicorn with every server-side timeout of `server_config`."""
    import uvicorn

    uvicorn.Server(server_config(settings, create_app(settings, model_spec=model_spec), host, port)).run()
