"""The Flask app factory."""
from __future__ import annotations

import gc
from typing import Any

from flask import Flask

from producer import errors
from producer.catalog import PushedModels
from producer.jsonprovider import FastJSONProvider
from sdq import defaults
from sdq.celery_app import make_celery
from sdq.config import Settings
from sdq.state.redisconn import connect
from sdq.state.store import JobStore
from storage import ResultStore


def create_app(test_config: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the producer app; settings come from the environment unless given."""
    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    settings = settings or Settings.from_env()
    app.config.update(SDQ=settings, MAX_CONTENT_LENGTH=max(defaults.MAX_JSON_BODY_BYTES, defaults.MAX_PROMPT_FILE_BYTES,
                                                        defaults.MAX_UPLOAD_BODY_BYTES))
    if test_config:
        app.config.update(test_config)

    # each open event stream holds one connection (pub/sub) for as long as it lives
    jobs = JobStore(connect(settings.redis_url, max_connections=defaults.PRODUCER_CONNECTIONS + 100))
    app.extensions["sdq_jobs"] = jobs  # the state layer's port: nothing else holds the connection
    app.extensions["celery"] = make_celery(settings.redis_url)
    store = ResultStore.from_settings(settings)
    app.extensions["sdq_store"] = store
    app.extensions["sdq_pushed"] = PushedModels(store)  # pushed models' families, for the model catalog
    app.extensions["sdq_streams"] = jobs.slots("streams", settings.max_streams, settings.stream_max_seconds + 60,
                                               defaults.STREAMS_FULL_RETRY_AFTER, "events")
    app.extensions["sdq_decodes"] = jobs.slots("uploads", settings.max_upload_decodes, defaults.UPLOAD_DECODE_HOLD,
                                               defaults.UPLOADS_BUSY_RETRY_AFTER, "file")

    from producer import meta, routes, web
    from producer.doors import a1111
    from producer.doors import openai

    app.register_blueprint(routes.bp)
    app.register_blueprint(meta.bp)
    app.register_blueprint(web.bp)
    a1111.register(app)
    openai.setup(app)
    errors.register(app)
    return app


def serving_app() -> Flask:
    """The app as `sdq producer` serves it: built, then every object alive after start-up (modules,
    the app) frozen out of the cyclic garbage collector, so the collections a large request sets off
    do not walk them again (they took a sixth of a 10,000-prompt submit)."""
    app = create_app()
    gc.freeze()
    return app
