"""The Flask app: Label Studio's ML-backend protocol over :class:`~ml_backend.service.Backend`.

Routes: ``GET /health`` (open: Label Studio polls it), ``GET /``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``GET /versions`` and the coordinators' ``GET /dashboard`` (HTTP basic
auth). Errors are JSON
``{"error": "..."}`` with the status of their :class:`~ml_backend.errors.BackendError`;
clients never see a traceback, and request bodies (``/setup`` carries Label
Studio's API token) are never logged.

Run it with gunicorn: ``gunicorn 'ml_backend.app:create_app()'`` reads the
config named by ``$GEOLABEL_CONFIG`` (default ``./geolabel.toml``).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import sys
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from geolabel.config import CONFIG_NAME, Config, load_config
from geolabel.errors import LabelConfigError
from ml_backend.errors import BackendError, BadRequestError
from ml_backend.protocol import PredictRequest, SetupRequest, WebhookEvent, parse_body
from ml_backend.service import Backend, BackendSettings
from trainer.dashboard import dashboard_blueprint
from trainer.legacy import adopt_legacy_stores

log = logging.getLogger("geolabel.ml_backend")
access_log = logging.getLogger("geolabel.ml_backend.access")
CONFIG_ENV = "GEOLABEL_CONFIG"
OPEN_ROUTES = ("/health",)  # Label Studio polls it; every other route needs the basic auth
#: Largest request body accepted (bytes): a click's context carries the task's annotations and drafts
#: (brush RLE), a batch of pre-annotations up to ``MAX_TASKS`` tasks.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Query parameters whose values are never logged.
SECRET_PARAMS = re.compile(r"token|key|pass|secret|auth|sig|session|code|cred", re.IGNORECASE)
_SECRET_IN_QUERY = re.compile(
    r"([?&][^=&\s\"]*(?:token|key|pass|secret|auth|sig|session|code|cred)[^=&\s\"]*=)[^&\s\"]*", re.IGNORECASE
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def gunicorn_argv(bind: str, workers: int, threads: int) -> list[str]:
    """The command that serves the backend under gunicorn (``geolabel backend``, ``geolabel serve``).

    Args:
        bind: ``HOST:PORT`` to listen on.
        workers: worker processes (each loads SAM: about 0.4 GB for vit_b).
        threads: threads per worker.
    """
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--workers", str(workers),
        "--threads", str(threads),
        "--timeout", "600",  # a cold click runs SAM's image encoder: seconds to minutes on a CPU
        "--graceful-timeout", "10",
        "ml_backend.app:create_app()",
    ]  # fmt: skip


def settings_from_config(config: Config) -> BackendSettings:
    """The backend's settings from ``geolabel.toml``: it serves ``project.name`` and its model store only.

    A data folder's model store from before stores were per project is adopted by its one project first.
    """
    adopt_legacy_stores(config)
    return BackendSettings(
        data_dir=config.data_dir,
        project_title=config.project.name,
        cache_dir=config.embedding_cache_dir,
        models_dir=config.models_dir,
        predictions_dir=config.predictions_dir,
        sam_model_type=config.sam.model_type,
        sam_checkpoint=config.sam_checkpoint,
        sam_device=config.sam.device,
        memory_cache_items=config.sam.memory_cache,
        uncertainty=config.trainer.uncertainty,
    )


def create_app(config: Config | None = None, *, backend: Backend | None = None) -> Flask:
    """Build the ML backend app for a project.

    Args:
        config: the project config; default: the file named by ``$GEOLABEL_CONFIG`` or ``./geolabel.toml``.
        backend: an already built backend (tests and benches inject one with a random-weight SAM).

    Raises:
        ConfigError: if the config file is missing or invalid.
    """
    if config is None:
        config = load_config(os.environ.get(CONFIG_ENV, CONFIG_NAME))
    service = backend or Backend(settings_from_config(config))
    auth = config.ml_backend_auth()
    app = Flask("ml_backend")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _install_logging()
    app.extensions["geolabel_backend"] = service
    _install_auth(app, auth.username, auth.password)
    _install_errors(app)
    _install_routes(app, service)
    app.register_blueprint(dashboard_blueprint(config))
    return app


def _install_routes(app: Flask, service: Backend) -> None:
    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(service.health())

    @app.post("/setup")
    def setup() -> Response:
        return jsonify(service.setup(parse_body(SetupRequest, _json())))

    @app.post("/predict")
    def predict() -> Response:
        return jsonify(service.predict(parse_body(PredictRequest, _json())))

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(service.webhook(parse_body(WebhookEvent, _json())))

    @app.get("/versions")
    def versions() -> Response:
        return jsonify({"versions": service.models.store.versions()})


def _install_auth(app: Flask, username: str, password: str) -> None:
    expected_user, expected_password = username.encode(), password.encode()

    @app.before_request
    def check_auth() -> Response | None:
        g.started = time.perf_counter()
        if request.path in OPEN_ROUTES:
            return None
        auth = request.authorization
        given_user = (auth.username or "").encode() if auth and auth.type == "basic" else b""
        given_password = (auth.password or "").encode() if auth and auth.type == "basic" else b""
        user_ok = hmac.compare_digest(given_user, expected_user)
        password_ok = hmac.compare_digest(given_password, expected_password)
        if user_ok and password_ok:
            return None
        response = jsonify({"error": "authentication required: HTTP basic auth with the ML backend's user"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="geolabel ML backend"'
        return response

    @app.after_request
    def log_request(response: Response) -> Response:
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        access_log.info("%s %s %s %.0f ms", request.method, loggable_path(), response.status_code, elapsed)
        return response


def _install_logging() -> None:
    """Make the backend's INFO records (the access log) reach stderr, the backend's log file.

    Under gunicorn and ``flask run`` nothing configures Python's logging, so INFO records would be
    dropped; a handler is added once, unless the root logger already has one (pytest, an embedding
    application): then records propagate to it.
    """
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    werkzeug_log = logging.getLogger("werkzeug")  # the development server's own request lines
    if not any(isinstance(f, MaskQuerySecrets) for f in werkzeug_log.filters):
        werkzeug_log.addFilter(MaskQuerySecrets())
    if logging.getLogger().handlers or any(getattr(h, "geolabel", False) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.geolabel = True  # type: ignore[attr-defined]
    log.addHandler(handler)


class MaskQuerySecrets(logging.Filter):
    """Mask secret-looking query values in log lines written by others (werkzeug's development server)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with ``***`` for the values; never drops a record."""
        message = record.getMessage()
        masked = _SECRET_IN_QUERY.sub(r"\1***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def loggable_path(limit: int = 300) -> str:
    """The request's path and query for the log: secret-looking values masked, control characters escaped."""
    path = request.path
    if request.args:
        pairs = (f"{k}={'***' if SECRET_PARAMS.search(k) else v}" for k, v in request.args.items(multi=True))
        path = f"{path}?{'&'.join(pairs)}"
    text = path.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}..."


def _install_errors(app: Flask) -> None:
    @app.errorhandler(BackendError)
    def backend_error(exc: BackendError) -> tuple[Response, int]:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify({"error": str(exc)}), exc.status

    @app.errorhandler(LabelConfigError)
    def config_error(exc: LabelConfigError) -> tuple[Response, int]:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify({"error": str(exc)}), 422

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        size = f"{request.content_length} bytes" if request.content_length else "a body"
        message = f"the request carries {size}; the ML backend accepts at most {MAX_BODY_BYTES} bytes"
        log.warning("%s %s: %s", request.method, request.path, message)
        return jsonify({"error": message}), BadRequestError.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify({"error": exc.description or exc.name}), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("%s %s failed", request.method, request.path)  # the traceback stays in the log
        return jsonify({"error": f"internal error ({type(exc).__name__}); see the ML backend's log"}), 500


def _json() -> Any:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise BadRequestError(
            "the request body is JSON nested too deeply to be a Label Studio request"
        ) from None
    if body is None:
        raise BadRequestError("the request body must be JSON (Content-Type: application/json)")
    return body
