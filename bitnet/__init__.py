"""bitnet: ternary LLMs on ordinary CPUs.

The code lives in the repository's top-level folders (`cli/`, `tools/`, `kernels/`, `third_party/`),
which the build backend maps onto `bitnet.cli`, `bitnet.tools`, ... .

The Python API is `bitnet.load(path, n_threads=..., n_ctx=...)` (see `bitnet.tools.llm`). This
module stays light: the bindings, NumPy and llama.cpp load on the first `load`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "TextStream", "load"]

if TYPE_CHECKING:
    from pathlib import Path

    from bitnet.tools.llm import LLM, TextStream


def load(path: str | Path, **options: Any) -> LLM:
    """Load a GGUF model for generation in this process: `bitnet.tools.llm.LLM`.

    `path` is a GGUF file or the name of a model in the store (`bitnet pull`, `bitnet list`).

    Options: `n_threads` (default: the count `bitnet run` measured fastest here, cached, else
    the physical cores; never measured here), `n_threads_batch` (prompts; default: `n_threads`
    if given, else the cached prompt count, else the physical cores), `n_ctx` (context in
    tokens, prompt + reply; 2048), `n_batch` (prompt tokens per evaluation step; 512), `seed`
    (sampling seed; -1: random), `verbose` (llama.cpp's log on stderr; default: only with
    BITNET_DEBUG=1). Use it as a context manager (or call `close()`) to free its native memory.

        with bitnet.load("model.gguf", n_threads=2) as llm:
            print(llm.generate("Once upon a time", max_tokens=32, temperature=0))
    """
    from bitnet.tools import llm
    from bitnet.tools.store import resolve_model

    return llm.LLM(resolve_model(path), **options)


def __getattr__(name: str) -> Any:
    if name in ("LLM", "TextStream"):
        from bitnet.tools import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'bitnet' has no attribute {name!r}")
