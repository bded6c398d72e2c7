"""`resolve_source`: local folders, and downloads from a fake hub served on 127.0.0.1.

The fake implements the three endpoints `huggingface_hub.snapshot_download` uses: repo info
(`/api/models/{repo}/revision/{rev}`), the file tree (`/api/models/{repo}/tree/{commit}`) and file
download (`HEAD`/`GET /{repo}/resolve/{commit}/{path}`). No request leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from bitnet.tools import hub
from bitnet.tools.errors import CorruptFileError, InputNotFoundError, NetworkError
from bitnet.tools.hub import resolve_source, verify_checkpoint
from bitnet.tools.safetensors import Checkpoint, write_safetensors

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FakeHub:
    """Repos: {repo_id: {path: bytes}}, all at one commit reachable as "main" or by hash."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def add_folder(self, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        files.update(extra or {})
        self.repos[repo_id] = files

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(
                self,
                status: int,
                body: bytes,
                headers: dict[str, str] | None = None,
                head: bool = False,
            ) -> None:
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, code: str, head: bool = False) -> None:
                body = json.dumps({"error": code}).encode()
                self._send(
                    404, body, {"X-Error-Code": code, "Content-Type": "application/json"}, head
                )

            def _route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub_.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo_id, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
                    files = hub_.repos.get(repo_id)
                    if files is None:
                        return self._error("RepoNotFound", head)
                    if rev not in ("main", COMMIT):
                        return self._error("RevisionNotFound", head)
                    if kind == "revision":
                        info = {
                            "id": repo_id,
                            "sha": COMMIT,
                            "private": False,
                            "siblings": [{"rfilename": f} for f in files],
                        }
                        return self._send(
                            200,
                            json.dumps(info).encode(),
                            {"Content-Type": "application/json"},
                            head,
                        )
                    if kind == "tree":
                        tree = [
                            {"type": "file", "path": f, "size": len(b), "oid": _sha1(b)}
                            for f, b in files.items()
                        ]
                        return self._send(
                            200,
                            json.dumps(tree).encode(),
                            {"Content-Type": "application/json"},
                            head,
                        )
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    files = hub_.repos.get(repo_id)
                    if files is None:
                        return self._error("RepoNotFound", head)
                    if rev not in ("main", COMMIT):
                        return self._error("RevisionNotFound", head)
                    if name not in files:
                        return self._error("EntryNotFound", head)
                    body = files[name]
                    etag = hashlib.sha256(body).hexdigest()
                    return self._send(
                        200, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, head
                    )
                return self._send(404, b"not found", head=head)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._route(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(head=True)

        return Handler

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(tiny_packed: Path) -> Iterator[FakeHub]:
    with FakeHub() as fh:
        fh.add_folder("fake-org/tiny", tiny_packed, extra={"pytorch_model.bin": b"\0" * 64})
        yield fh


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


# --- local folders ------------------------------------------------------------------------------


def test_local_folder_is_used_as_is(tiny_packed: Path) -> None:
    assert resolve_source(str(tiny_packed)) == tiny_packed.resolve()
    assert resolve_source(tiny_packed) == tiny_packed.resolve()


def test_local_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="config.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(InputNotFoundError, match="is a file"):
        resolve_source(str(tmp_path / "model.gguf"))


@pytest.mark.parametrize(
    "src, match",
    [
        ("./missing-folder", "does not exist"),
        ("/no/such/place", "does not exist"),
        ("a/b/c", "neither an existing folder nor a repo id"),
        ("bare-name", "neither an existing folder nor a repo id"),
        ("x//y", "neither an existing folder nor a repo id"),
    ],
)
def test_neither_folder_nor_repo_id(src: str, match: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputNotFoundError, match=match):
        resolve_source(
            src, cache_dir=tmp_path / "cache", endpoint=f"http://127.0.0.1:{_closed_port()}"
        )


def test_repo_id_shape() -> None:
    assert hub.looks_like_repo_id("microsoft/bitnet-b1.58-2B-4T")
    assert hub.looks_like_repo_id("1bitLLM/bitnet_b1_58-large")
    for bad in ["microsoft", "a/b/c", "/abs/path", "./x", "a/..", "a--b/c", "a/"]:
        assert not hub.looks_like_repo_id(bad), bad


# --- downloads ----------------------------------------------------------------------------------


def test_download_from_the_fake_hub(fake_hub: FakeHub, tiny_packed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seen: list[tuple[int, int, str]] = []
    folder = resolve_source(
        "fake-org/tiny",
        progress=lambda d, t, s: seen.append((d, t, s)),
        cache_dir=cache,
        endpoint=fake_hub.url,
    )
    assert folder.is_relative_to(cache) and folder.name == COMMIT
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (folder / name).read_bytes() == (tiny_packed / name).read_bytes()
    assert not (folder / "pytorch_model.bin").exists()  # only convertible files are fetched
    assert not any(p.endswith("pytorch_model.bin") for _, p in fake_hub.requests)
    assert Checkpoint(folder).names() == Checkpoint(tiny_packed).names()
    total = sum(
        (tiny_packed / f).stat().st_size
        for f in fake_hub.repos["fake-org/tiny"]
        if f != "pytorch_model.bin"
    )
    assert seen and seen[-1][0] == total and all(s.startswith("downloading") for *_, s in seen)

    # Second call: the cached snapshot is found again, also by commit hash.
    assert resolve_source("fake-org/tiny", cache_dir=cache, endpoint=fake_hub.url) == folder
    assert resolve_source("fake-org/tiny", COMMIT, cache_dir=cache, endpoint=fake_hub.url) == folder


def test_unknown_repo_and_revision(fake_hub: FakeHub, tmp_path: Path) -> None:
    kw = {"cache_dir": tmp_path / "cache", "endpoint": fake_hub.url}
    with pytest.raises(InputNotFoundError, match="was not found") as info:
        resolve_source("fake-org/nothing-here", **kw)
    assert "\n" not in str(info.value)
    with pytest.raises(InputNotFoundError, match="no revision 'v9'"):
        resolve_source("fake-org/tiny", "v9", **kw)


def test_unreachable_hub_is_network_error(tmp_path: Path) -> None:
    with pytest.raises(NetworkError) as info:
        resolve_source(
            "fake-org/tiny",
            cache_dir=tmp_path / "cache",
            endpoint=f"http://127.0.0.1:{_closed_port()}",
        )
    message = str(info.value)
    assert "fake-org/tiny" in message and "\n" not in message and message.count(". ") == 0
    assert info.value.hint


def test_offline_mode(fake_hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NetworkError, match="HF_HUB_OFFLINE"):
        resolve_source("fake-org/tiny", cache_dir=cache, endpoint=fake_hub.url)
    assert fake_hub.requests == []

    # Once downloaded, offline mode finds the cached copy without the network.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    online = resolve_source("fake-org/tiny", cache_dir=cache, endpoint=fake_hub.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    n = len(fake_hub.requests)
    assert resolve_source("fake-org/tiny", cache_dir=cache, endpoint=fake_hub.url) == online
    assert len(fake_hub.requests) == n


def _copy_with(tiny: Path, dest: Path, change) -> Path:
    shutil.copytree(tiny, dest)
    ckpt = Checkpoint(tiny)
    items = [(n, change(n, np.asarray(ckpt.raw(n))), ckpt.dtype(n)) for n in ckpt.names()]
    write_safetensors(dest / "model.safetensors", items, {"format": "pt"})
    return dest


def test_all_zero_tensor_in_a_download_is_corrupt(
    fake_hub: FakeHub, tiny_packed: Path, tmp_path: Path
) -> None:
    victim = "model.layers.1.mlp.up_proj.weight"
    bad = _copy_with(
        tiny_packed, tmp_path / "bad", lambda n, a: np.zeros_like(a) if n == victim else a
    )
    fake_hub.add_folder("fake-org/zeros", bad)
    with pytest.raises(CorruptFileError, match=victim):
        resolve_source("fake-org/zeros", cache_dir=tmp_path / "cache", endpoint=fake_hub.url)


def test_truncated_download_is_corrupt(
    fake_hub: FakeHub, tiny_packed: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_packed, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    fake_hub.add_folder("fake-org/half", bad)
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        resolve_source("fake-org/half", cache_dir=tmp_path / "cache", endpoint=fake_hub.url)


def test_repo_without_config(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.repos["fake-org/weights-only"] = {"README.md": b"hi", "x.json": b"{}"}
    with pytest.raises(InputNotFoundError, match="no config.json"):
        resolve_source("fake-org/weights-only", cache_dir=tmp_path / "cache", endpoint=fake_hub.url)


def test_verify_checkpoint_samples_and_confirms(tiny_packed: Path, tmp_path: Path) -> None:
    verify_checkpoint(tiny_packed)
    # A big tensor whose sampled slices are zero but which has data elsewhere is fine.
    arr = np.zeros((1024, 256), dtype=np.uint8)
    arr[300, 17] = 1
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_safetensors(
        folder / "model.safetensors", [("w", arr, "U8"), ("n", np.zeros(4, np.float32), "F32")]
    )
    verify_checkpoint(folder)  # 1-D zero tensors (biases, ...) are allowed
    arr[300, 17] = 0
    write_safetensors(folder / "model.safetensors", [("w", arr, "U8")])
    with pytest.raises(CorruptFileError, match="all zeros"):
        verify_checkpoint(folder)
