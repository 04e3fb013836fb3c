"""A real uvicorn server on 127.0.0.1 (in a thread of the test process) serving the default model."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


class LiveServer:
    """``with LiveServer(app) as url:`` serves ``app`` on a free loopback port until the block ends."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # the OS picks a free port; no race with other tests
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="session")
def model_pool():
    """One ModelPool (the default model) shared by the serve tests; tests that add adapters remove them."""
    from acculturate.serve.models import ModelPool

    return ModelPool("smollm2-135m", device="cpu")


@pytest.fixture
def live_server(model_pool, tmp_path):
    """Start a server over the shared pool with a fresh store; yields (url, app)."""
    from acculturate.serve import ServeConfig, create_app

    def start(**overrides):
        config = ServeConfig(**{"db": str(tmp_path / "feedback.db"), **overrides})
        app = create_app(config, pool=model_pool)
        return LiveServer(app), app
    return start


@pytest.fixture(scope="module")
def rag_home(tmp_path_factory):
    """A RAG home with one index, ``customs``: a Mexico and a Spain document (needs the rag extra)."""
    pytest.importorskip("faiss")
    pytest.importorskip("bm25s")
    from acculturate.rag import update_index

    home = tmp_path_factory.mktemp("rag-home")
    docs = home.parent / "serve-docs"
    docs.mkdir(exist_ok=True)
    (docs / "mexico.md").write_text("---\nregion: Mexico\n---\n# Customs in Mexico\n\n## Holidays\n\n"
                                    "On the Day of the Dead families build altars with marigolds and sugar skulls.\n")
    (docs / "spain.md").write_text("---\nregion: Spain\n---\n# Customs in Spain\n\n## Festivals\n\n"
                                   "La Tomatina is a tomato fight held in Bunol every August.\n")
    update_index([docs], "customs", home=home, progress=False)
    return home
