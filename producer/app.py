"""The Flask app factory."""
from __future__ import annotations

from typing import Any

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from producer.jsonprovider import FastJSONProvider
from sdq.config import Settings
from sdq.exceptions import InvalidInput, NotFound
from sdq.jobstore import JobStore
from sdq.queue import make_celery
from storage import ResultStore


def create_app(test_config: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the producer app; settings come from the environment unless given."""
    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    settings = settings or Settings.from_env()
    app.config.update(SDQ=settings, MAX_CONTENT_LENGTH=64 * 1024 * 1024)
    if test_config:
        app.config.update(test_config)

    client = redis.Redis.from_url(settings.redis_url)
    app.extensions["sdq_redis"] = client
    app.extensions["sdq_jobs"] = JobStore(client)
    app.extensions["celery"] = make_celery(settings.redis_url)
    store = ResultStore.from_settings(settings)
    app.extensions["sdq_store"] = store

    from producer import meta, routes, web

    app.register_blueprint(routes.bp)
    app.register_blueprint(meta.bp)
    app.register_blueprint(web.bp)
    _register_errors(app)
    return app


def _error(status: int, code: str, message: str, field: str | None = None):
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


def _register_errors(app: Flask) -> None:
    @app.errorhandler(InvalidInput)
    def invalid(exc: InvalidInput):
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return _error(404, "not_found", str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return _error(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(redis.ConnectionError)
    def redis_down(exc: Exception):
        return _error(503, "unavailable", f"job store unavailable: {exc}")
