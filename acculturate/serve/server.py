"""Run the server with uvicorn: what ``acculturate serve`` calls."""

from __future__ import annotations

from acculturate.serve.config import ServeConfig


def run_server(config: ServeConfig, log_level: str = "info") -> None:
    """Load the models, open the store and serve on ``config.host:config.port`` until interrupted.

    One process, one worker: the model and the batching worker live in this process, so more
    uvicorn workers would load the model again each and batch separately.

    Raises:
        AuthConfigError (a ConfigError): ``host`` is not a loopback address and no API key is set
            (unless ``insecure``), or a key or key file is malformed.
    """
    from acculturate.serve.auth import check_bind

    # Before the model loads: a server that would be open to the network does not start.
    check_bind(config.host, config.resolved_api_keys(), config.insecure)
    import logging
    import sys

    import uvicorn

    from acculturate.serve.app import create_app

    if config.switch_interval_ms is not None:   # the whole process: it runs only the server
        sys.setswitchinterval(config.switch_interval_ms / 1000)

    # The batching worker's start-up line (what its warm-up ran, how long it took) is part of the
    # server's log even without --verbose.
    logging.getLogger("acculturate.serve.batching").setLevel(logging.INFO)
    app = create_app(config)
    print(f"serving {', '.join(app.state.pool.names())} on http://{config.host}:{config.port} "
          f"(web chat at /, OpenAI API at /v1); store: {app.state.store.url}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, workers=1)
