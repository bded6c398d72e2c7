"""TL1 / TL2 weights packed with non-default (e.g. `bitnet codegen --tune`d) tiles, end to end
through the patched llama.cpp: the glue reads each weight's tiles from its tail and computes with
the table entry of exactly those tiles.

The tiny model (hidden 256, ffn 512) is converted with the committed table's TEST_TILES
(tools/codegen.py; served by every stock build): its logits must equal I2_S's bit for bit, as
with default tiles (tests/test_tl_e2e.py). A file without a tile record (as before the record)
runs on the table's default entry; tiles the build does not serve, and a corrupt record, stop
with a clear message. Skipped, with the reason, when the build predates the tile-aware table.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from native_helpers import binary as _binary

from bitnet.tools import build as B
from bitnet.tools import codegen
from bitnet.tools.quants import Tiling

pytestmark = pytest.mark.native

IDS = [1, 17, 42, 7, 300, 5, 99, 256, 3, 64, 12, 480]
TIMEOUT = 300
TINY = codegen.KNOWN_SHAPES[codegen.TEST_TILES_MODEL]


def _run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT)


def _logits_bin() -> Path:
    """llama-bitnet-logits of a build whose table serves TEST_TILES (else skip, saying why)."""
    exe = _binary("llama-bitnet-logits")
    served = B.served_tl_shapes(exe.resolve().parent.parent)
    need = {codegen.ShapeEntry.of(q, m, k, Tiling(*t)).key
            for q, t in codegen.TEST_TILES.items() for m, k in TINY}  # fmt: skip
    if served is None or not need <= served:
        pytest.skip("the llama.cpp build predates the tile-aware TL table: run python setup_env.py")
    return exe


def _set_records(src: Path, dst: Path, record: tuple[int, int, int] | None, only: str = "") -> None:
    """Copy a GGUF, rewriting the tile record (None: zeros) of its TL tensors (or just `only`)."""
    from bitnet.tools.gguf import GGUFReader

    data = bytearray(src.read_bytes())
    rec = bytes(12) if record is None else np.array(record, "<u4").tobytes()
    with GGUFReader(src) as r:
        for name, info in r.tensors.items():
            if info.type_id in (38, 43) and (not only or name == only):
                tail = info.offset + info.nbytes - 32
                data[tail + 4 : tail + 16] = rec
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    _logits_bin()
    from bitnet.tools.convert import convert_checkpoint
    from bitnet.tools.dummy import make_dummy

    tmp = tmp_path_factory.mktemp("tl-tuned-e2e")
    ckpt = make_dummy(tmp / "ckpt", preset="tiny", hidden=256, ffn=512, seed=0)
    out = {"i2_s": tmp / "m-i2_s.gguf"}
    convert_checkpoint(ckpt, out["i2_s"], outtype="i2_s")
    for qtype, tiles in codegen.TEST_TILES.items():
        out[qtype] = tmp / f"m-{qtype}-tuned.gguf"
        tiling = {(qtype, m, k): Tiling(*tiles) for m, k in TINY}
        convert_checkpoint(ckpt, out[qtype], outtype=qtype, tiles=tiling)
        out[f"{qtype}-default"] = tmp / f"m-{qtype}.gguf"
        convert_checkpoint(ckpt, out[f"{qtype}-default"], outtype=qtype)
    return out


def _logits(gguf: Path, tmp: Path, *extra: str) -> np.ndarray:
    out = tmp / f"logits{len(list(tmp.iterdir()))}.f32"
    res = _run([_logits_bin(), "-m", gguf, "--ids", ",".join(map(str, IDS)), "--all", "-t", "2",
                "-o", out, *extra])  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads(res.stdout)
    return np.fromfile(out, dtype="<f4").reshape(meta["n_rows"], meta["n_vocab"])


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", ["tl1", "tl2"])
def test_tuned_tiles_equal_i2s(models, tmp_path, qtype: str) -> None:
    assert all(e.tiling == Tiling(*codegen.TEST_TILES[qtype])
               for e in codegen.tl_entries(models[qtype]))  # fmt: skip
    for extra in ((), ("--ubatch", "1")):  # the batched and the single-token path
        got = _logits(models[qtype], tmp_path, *extra)
        assert np.isfinite(got).all() and got.std() > 0
        _same_bits(got, _logits(models["i2_s"], tmp_path, *extra))


@pytest.mark.parametrize("qtype", ["tl1", "tl2"])
def test_unrecorded_tiles_use_the_default_entry(models, tmp_path, qtype: str) -> None:
    old = tmp_path / "old.gguf"
    _set_records(models[f"{qtype}-default"], old, None)  # a file from before the record
    _same_bits(_logits(old, tmp_path), _logits(models["i2_s"], tmp_path))


def test_unserved_tiles_are_a_clear_error(models, tmp_path) -> None:
    bad = tmp_path / "unserved.gguf"  # BM 32, BK 96: valid for (256, 256), not in the table
    _set_records(models["tl2-default"], bad, (32, 96, 32), only="blk.0.attn_q.weight")
    # (the bytes are still default-tiled: the glue must refuse before computing anything)
    res = _run([_logits_bin(), "-m", bad, "--ids", "1,2,3", "-t", "2", "-o", tmp_path / "x.f32"])
    assert res.returncode != 0
    assert "blk.0.attn_q.weight" in res.stderr and "tiles (BM 32, BK 96, bm 32)" in res.stderr
    assert "rebuild with: python setup_env.py --tl-shapes MODEL" in res.stderr


def test_corrupt_tile_record_is_a_clear_error(models, tmp_path) -> None:
    bad = tmp_path / "corrupt.gguf"
    _set_records(models["tl2-default"], bad, (48, 96, 32), only="blk.0.attn_q.weight")
    res = _run([_logits_bin(), "-m", bad, "--ids", "1,2,3", "-t", "2", "-o", tmp_path / "x.f32"])
    assert res.returncode != 0
    assert "records tiles (BM 48, BK 96, bm 32) that cannot tile it" in res.stderr
