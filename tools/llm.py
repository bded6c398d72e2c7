"""The Python API: a GGUF model loaded into this process, on our patched llama.cpp build.

    import bitnet
    with bitnet.load("model.gguf", n_threads=2, n_ctx=2048) as llm:
        print(llm.generate("The capital of France is", max_tokens=16, temperature=0))
        for piece in llm.chat([{"role": "user", "content": "Hi"}], stream=True):
            print(piece, end="", flush=True)

The bindings are llama-cpp-python's (`llama_cpp`, installed by `setup_env.py` from the same pinned
sdist as our llama.cpp source, with its own build turned off); `LLAMA_CPP_LIB_PATH` points them at
the shared libraries of our build, so llama.cpp is compiled once and the Python API runs exactly
the kernels `bitnet run` does. Nothing here is imported by `import bitnet`: the bindings (and
NumPy, which they import) load on the first `bitnet.load`.

Generation is llama.cpp's: prompt evaluation, sampling (greedy at temperature 0, else top-k,
top-p and temperature, as `bitnet run`) and the end-of-generation check all run in C; Python only
moves token ids and text pieces.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import bindings
from .build import check_tl_served
from .constants import Keys
from .errors import RuntimeFailure, UsageError, debug_enabled

if TYPE_CHECKING:
    from .gguf import GGUFReader

Message = dict[str, str]


# --- results -----------------------------------------------------------------------------------


@dataclass
class Stats:
    """What one generation did (`LLM.last`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: "stop" (end of turn or a stop string), "length" (max_tokens or the context is full),
    #: or "interrupted" (the caller stopped reading the stream)
    finish_reason: str | None = None


class TextStream:
    """An iterator of text pieces as they are generated; `tokens` and `stats` fill as it runs.

    Stop early with `close()` (or by starting another generation on the same model, which ends
    this one: the model has one context).
    """

    def __init__(self, gen: Iterator[str], stats: Stats, tokens: list[int]) -> None:
        self._gen = gen
        self.stats = stats
        self.tokens = tokens

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        """Stop generating (the reply so far stays in `tokens`)."""
        self._gen.close()  # type: ignore[attr-defined]
        if self.stats.finish_reason is None:
            self.stats.finish_reason = "interrupted"

    def text(self) -> str:
        """Consume the rest of the stream and return the whole text."""
        return "".join(self)


# --- the model -------------------------------------------------------------------------------


class LLM:
    """A GGUF model loaded for generation. Made by `bitnet.load(path, ...)`.

    Frees its native memory (weights mapping, KV cache, context) on `close()`, at the end of a
    `with` block, or when garbage-collected.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_ctx: int = 2048,
        n_batch: int = 512,
        seed: int = -1,
        verbose: bool | None = None,
        reader: GGUFReader | None = None,
    ) -> None:
        """`n_threads` None: the decode count `bitnet run/chat/serve/bench` measured fastest
        here for this model's size class (cached in `$BITNET_CACHE/threads.json`), else the
        physical cores; nothing is measured here (a library call does not spend seconds timing
        llama-bench). `n_threads_batch` (prompt processing) None: `n_threads` when given, else
        the cached prompt count, else the physical cores. `reader`: the file's GGUFReader when
        the caller has checked it already."""
        from .runtime import check_model
        from .threads import known_threads

        self.path = Path(path)
        reader = reader or check_model(self.path)  # missing/corrupt file: one error, before C
        self._template: str | None = reader.kv.get(Keys.CHAT_TEMPLATE)
        check_tl_served(self.path, bindings.library_dir() / bindings.LIB_NAME, reader)
        if n_ctx < 1:
            raise UsageError(f"n_ctx must be at least 1, not {n_ctx}.")
        self._lib = bindings.load()
        verbose = debug_enabled() if verbose is None else verbose
        bindings.echo_log = verbose
        if n_threads:
            threads, threads_batch = n_threads, n_threads_batch or n_threads
        else:
            known = known_threads(self.path)
            threads, threads_batch = known.threads, n_threads_batch or known.prompt
        try:
            self._llama = self._lib.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads_batch,
                seed=seed if seed >= 0 else self._lib.LLAMA_DEFAULT_SEED,
                # llama-completion resolves flash attention "auto" to on for the CPU backend;
                # the same attention kernel keeps greedy tokens identical to `bitnet run`.
                flash_attn=True,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as exc:
            from .runtime import explain_log

            raise RuntimeFailure(
                f"llama.cpp could not load {self.path}: {explain_log(bindings.log_tail) or exc}"
            ) from exc
        self._vocab = self._llama._model.vocab
        self._bos_text = self._special_text(self._llama.token_bos())
        self._eos_text = self._special_text(self._llama.token_eos())
        # llama.cpp pads its context up to a multiple of 256; the bindings' buffers hold n_ctx.
        self.n_ctx: int = min(n_ctx, self._llama.n_ctx())
        self.n_threads = threads
        self.n_threads_batch = threads_batch
        self.last = Stats()
        self._active: TextStream | None = None

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model's native memory. Safe to call twice."""
        llama = getattr(self, "_llama", None)
        if llama is not None:
            llama.close()
            self._llama = None

    @property
    def closed(self) -> bool:
        return getattr(self, "_llama", None) is None

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _live(self) -> Any:
        if self._llama is None:
            raise UsageError("this model has been closed.", hint="load it again: bitnet.load(...)")
        return self._llama

    # --- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of `text`, with BOS first (when the model adds one) unless `add_bos=False`;
        special-token text such as `<|eot_id|>` becomes that token unless `special=False`. This is
        how `bitnet run` tokenizes a prompt."""
        return self._live().tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """The text of `tokens` (control tokens such as BOS/EOS render empty unless `special`)."""
        return b"".join(self._piece(t, special) for t in tokens).decode("utf-8", "replace")

    def _piece(self, token: int, special: bool = False) -> bytes:
        lib = self._lib
        buf = ctypes.create_string_buffer(64)
        n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:  # a longer piece: -n is the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _special_text(self, token: int) -> str:
        return self._piece(token, True).decode("utf-8", "replace") if token >= 0 else ""

    def is_end_of_generation(self, token: int) -> bool:
        """True for the model's end-of-turn/end-of-text tokens (llama.cpp's EOG set)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    # --- generation ------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stream: bool = False,
    ) -> str | TextStream:
        """Continue `prompt` (text, tokenized as `bitnet run` does, or token ids).

        Stops at the model's end of generation, a `stop` string (not included), `max_tokens`
        (-1: until the context is full) or the end of the context. `temperature=0` is greedy and
        gives the same tokens as `bitnet run --temp 0`. Returns the text, or with `stream=True` a
        `TextStream` of pieces as they come. `llm.last` holds the token counts and why it stopped.
        """
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        return self._start(ids, max_tokens, temperature, top_k, top_p, seed, stop, stream)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = -1,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int | None = None,
        stream: bool = False,
    ) -> str | TextStream:
        """The assistant's reply to `messages` ([{"role": "system"|"user"|"assistant",
        "content": ...}, ...]) through the model's own chat template; stops at end of turn.
        `max_tokens=-1` lets the reply run to the end of the context."""
        ids = self.chat_tokens(messages)
        return self._start(ids, max_tokens, temperature, top_k, top_p, seed, (), stream)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str:
        """`messages` rendered with the model's chat template (GGUF `tokenizer.chat_template`)."""
        if not self._template:
            raise UsageError(
                f"{self.path.name} has no chat template.",
                hint="use generate() with a plain prompt, or convert the model from a folder "
                "whose tokenizer_config.json has a chat_template",
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._live()
        fmt = Jinja2ChatFormatter(
            template=self._template,
            eos_token=self._eos_text,
            bos_token=self._bos_text,
            add_generation_prompt=add_generation_prompt,
        )
        return fmt(messages=[dict(m) for m in messages]).prompt

    def chat_tokens(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of `messages` rendered for the assistant's next turn (one BOS at most)."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UsageError(f"message {i} needs a 'role' and a 'content': {m!r}")
        text = self.apply_chat_template(messages)
        # A template that writes BOS itself (most do) must not get a second one from tokenize.
        own_bos = bool(self._bos_text) and text.startswith(self._bos_text)
        return self.tokenize(text, add_bos=not own_bos)

    def _start(
        self,
        ids: list[int],
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int | None,
        stop: Sequence[str],
        stream: bool,
    ) -> str | TextStream:
        llama = self._live()
        if not ids:
            raise UsageError("the prompt is empty (no tokens).")
        if len(ids) >= self.n_ctx:
            raise UsageError(
                f"the prompt is {len(ids)} tokens and the context holds {self.n_ctx}.",
                hint="shorten the prompt or load with a larger n_ctx",
            )
        room = self.n_ctx - len(ids)
        limit = room if max_tokens < 0 else min(max_tokens, room)
        if self._active is not None:  # one KV cache: an unfinished stream ends here
            self._active.close()
        if seed is not None:
            llama.set_seed(seed)
        self.last = stats = Stats(prompt_tokens=len(ids))
        tokens: list[int] = []
        gen = self._pieces(llama, ids, limit, temperature, top_k, top_p, stop, stats, tokens)
        result = TextStream(gen, stats, tokens)
        if not stream:
            return result.text()
        self._active = result
        return result

    def _pieces(
        self,
        llama: Any,
        ids: list[int],
        limit: int,
        temperature: float,
        top_k: int,
        top_p: float,
        stop: Sequence[str],
        stats: Stats,
        tokens: list[int],
    ) -> Iterator[str]:
        if limit <= 0:
            stats.finish_reason = "length"
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        held = ""  # text that may be the start of a stop string
        # The sampler chain of `bitnet run` (llama.cpp's defaults): no repeat penalty, typical
        # sampling off, min-p 0.05; greedy at temperature 0.
        sampling = dict(top_k=top_k, top_p=top_p, min_p=0.05, typical_p=1.0, repeat_penalty=1.0)
        for tok in llama.generate(ids, temp=max(temperature, 0.0), **sampling):
            if self.is_end_of_generation(tok):
                stats.finish_reason = "stop"
                break
            tokens.append(tok)
            stats.completion_tokens = len(tokens)
            text = held + decoder.decode(self._piece(tok))
            held = ""
            if stop:
                cut = _find_stop(text, stop)
                if cut is not None:
                    if text[:cut]:
                        yield text[:cut]
                    stats.finish_reason = "stop"
                    return
                text, held = _hold_back(text, stop)
            if text:
                yield text
            if len(tokens) >= limit:
                stats.finish_reason = "length"
                break
        rest = held + decoder.decode(b"", final=True)
        if rest:
            yield rest


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def _hold_back(text: str, stop: Sequence[str]) -> tuple[str, str]:
    """Split `text` into what can be shown and a tail that may begin a stop string."""
    keep = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return (text[: len(text) - keep], text[len(text) - keep :]) if keep else (text, "")
