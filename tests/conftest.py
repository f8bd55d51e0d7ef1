from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from osmem_server import OsmemServer

from sidecar.config import Settings
from sidecar.rerank.scorers.base import Scorer
from tests.fakes import KeyScorer
from tests.models import build_tiny_cross_encoder
from tests.servers import Http, SidecarThread


@pytest.fixture(scope="session", autouse=True)
def _exports_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ONNX/OpenVINO exports the tests make go to a folder of the session, not the user's HF cache (serve
    processes the tests start inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIDECAR_EXPORT_DIR", str(tmp_path_factory.mktemp("exports")))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT cross-encoder saved with save_pretrained: the real loading path, fast."""
    return str(build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce")))


@pytest.fixture(scope="session")
def osmem() -> Iterator[OsmemServer]:
    """One real osmem-server process for the session; tests take a fresh clone each."""
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()


@pytest.fixture
def engine(osmem: OsmemServer) -> Iterator[str]:
    """URL of a fresh, empty engine (an osmem clone on its own port)."""
    clone = osmem.clone()
    yield clone.url
    clone.close()


@pytest.fixture
def http() -> Http:
    return Http()


@pytest.fixture
def make_sidecar() -> Iterator[Callable[..., SidecarThread]]:
    with ExitStack() as started:  # every sidecar is stopped, in reverse order, even if stopping one fails

        def make(upstream: str, scorer: Scorer | None = None, **settings: Any) -> SidecarThread:
            """The sidecar in front of ``upstream``; proxy tests that score nothing get the deterministic scorer."""
            if scorer is None and "model" not in settings:
                scorer = KeyScorer()
            server = SidecarThread(Settings(upstream=upstream, **settings), scorer=scorer)
            started.callback(server.stop)
            return server.start()

        yield make


@pytest.fixture
def sidecar(engine: str, make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    return make_sidecar(engine)
