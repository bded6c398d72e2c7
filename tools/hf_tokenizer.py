"""Llama-3-style byte-level BPE tokenizer files for made-up (dummy) checkpoints.

BitNet b1.58 2B-4T ships a Llama-3 tokenizer: byte-level BPE (GPT-2 byte-to-unicode mapping),
the Llama-3 pre-tokenizer regex, 128000 ranked tokens, 280147 merges and 256 special tokens
(spec §4.1). This module writes HF ``tokenizer.json`` and ``tokenizer_config.json`` of that shape:

* at vocab 128256, when the ``quicktok-v1`` package is installed, the real Llama-3 ranks it ships
  are used (merges derived from the ranks), so a dummy 2B-4T has the real tokenizer;
* otherwise 256 byte tokens plus merges that Hugging Face ``tokenizers`` learns from an embedded
  English text, then the Llama-3 special tokens, padded with reserved specials up to the
  requested vocabulary size.

Either way the pipeline (pre-tokenizer, decoder, BOS template) is built and serialised by
``tokenizers`` itself, so ``tokenizer.json`` is the file that library writes, not our copy of it.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import tokenizers

#: The Llama-3 pre-tokenizer split pattern (HF `Split` pre-tokenizer, behaviour "Isolated").
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
EOT_TOKEN = "<|eot_id|>"

#: The first ten Llama-3 special tokens, in id order; the rest are reserved_special_token_5, ...
_NAMED_SPECIALS = [
    BOS_TOKEN,
    EOS_TOKEN,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    EOT_TOKEN,
]
MIN_SPECIALS = len(_NAMED_SPECIALS)
LLAMA3_VOCAB_SIZE = 128256

#: BitNet b1.58 2B-4T's chat format: role-prefixed plain text, each turn closed by <|eot_id|>,
#: BOS once at the start (spec §4.1). Plain Jinja that llama.cpp's `--jinja` engine can run.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' }}"
    "{% else %}{{ message['role'] + ': ' }}{% endif %}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# Training text for the small tokenizer (ASCII, written for this project).
_CORPUS = """\
A ternary language model stores every weight of its linear layers as one of three values: minus
one, zero or plus one. Each layer keeps a single scale, so the model needs a little more than one
and a half bits per weight instead of sixteen. The idea is simple, and the consequences are large.
Matrix multiplication becomes addition and subtraction, the memory traffic shrinks by a factor of
ten, and a laptop can run a model that would otherwise need a server.

The model is trained with the ternary weights in the loop. During the forward pass the latent
weights are scaled by their mean absolute value, rounded to the nearest integer and clipped to the
range from minus one to one. The activations of every token are quantized to eight bits with a
scale of one hundred and twenty seven over their largest absolute value. The backward pass sees
the latent weights, which is why the training is stable.

To run such a model on an ordinary processor we first convert the checkpoint. The converter reads
the tensors one at a time, packs four ternary codes into every byte, and writes a single file that
holds the weights, the vocabulary, the chat template and the settings of the architecture. Then a
patched inference engine loads the file and multiplies the packed weights with the quantized
activations. The kernels use the vector instructions of the processor when they are available and
a portable scalar path when they are not, and every path must give the same answer.

How fast is it? That depends on the memory bandwidth of the machine, the number of threads and the
length of the prompt. We measure the prompt processing speed and the generation speed separately,
repeat every measurement several times, and report the median together with the spread. We also
report the energy per token when the machine can measure it, and we say clearly when it cannot.

The first thing to check is that the converted model gives the same tokens as the reference. We
keep a small reference implementation written with arrays only, feed it the same prompt, and
compare the logits of every position. The differences must stay within a stated tolerance, and the
greedy tokens must match exactly. Only then do we look at the speed.

Here is a short conversation that a user might have with the assistant.
User: What is the capital of France?
Assistant: The capital of France is Paris.
User: And how many people live there?
Assistant: About two million people live in the city itself, and more than ten million in the
larger region around it.
User: Thank you. Can you write a short poem about the sea?
Assistant: The sea is wide, the sea is deep, it sings the sailors off to sleep; it keeps the
secrets of the shore, and tells them once, and then no more.

Numbers appear too: 1, 2, 3, 10, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096 and 2560 are common
sizes, and 3.14159 is the ratio of a circle to its diameter. In 2024 and 2025 many small models were
released; some of them had 125 million parameters, others 2 billion, 7 billion or 70 billion.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. It's a model,
they're fast, we've seen it, I'm sure you'll like it, and he'd agree.
"""


# --- byte-level mapping -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100, U+0101, ...
    in byte order (so a space becomes 'Ġ' and a newline 'Ċ').
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def to_byte_level(data: bytes) -> str:
    m = byte_to_unicode()
    return "".join(m[b] for b in data)


# --- Llama-3 ranks from quicktok ----------------------------------------------------------------


def _quicktok_data_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("quicktok")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if (d / "llama3.vocab").is_file() and (d / "llama3.special").is_file():
            return d
    return None


@lru_cache(maxsize=1)
def llama3_ranks() -> tuple[list[bytes], list[str]] | None:
    """(token bytes by rank, special tokens in id order) of Llama-3, if quicktok-v1 ships them.

    quicktok's data files: ``llama3.vocab`` = u32 count, then per token u16 length, the bytes
    and a u32 rank; ``llama3.special`` = u32 count, then per token u32 id, u16 length, UTF-8.
    Returns None when the package is absent or its files are not what we expect.
    """
    d = _quicktok_data_dir()
    if d is None:
        return None
    try:
        raw = (d / "llama3.vocab").read_bytes()
        (n,) = struct.unpack_from("<I", raw, 0)
        pos, by_rank = 4, [b""] * n
        for _ in range(n):
            (length,) = struct.unpack_from("<H", raw, pos)
            tok = raw[pos + 2 : pos + 2 + length]
            (rank,) = struct.unpack_from("<I", raw, pos + 2 + length)
            by_rank[rank] = tok
            pos += 6 + length
        raw = (d / "llama3.special").read_bytes()
        (m,) = struct.unpack_from("<I", raw, 0)
        pos, specials = 4, []
        for _ in range(m):
            tid, length = struct.unpack_from("<IH", raw, pos)
            specials.append((tid, raw[pos + 6 : pos + 6 + length].decode("utf-8")))
            pos += 6 + length
    except (OSError, struct.error, IndexError, UnicodeDecodeError):
        return None
    specials.sort()
    ok = (
        n == 128000
        and all(by_rank)
        and len(specials) == LLAMA3_VOCAB_SIZE - n
        and [t for t, _ in specials] == list(range(n, LLAMA3_VOCAB_SIZE))
        and [s for _, s in specials[:MIN_SPECIALS]] == _NAMED_SPECIALS
    )
    return (by_rank, [s for _, s in specials]) if ok else None


def merges_from_ranks(by_rank: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Derive HF BPE merges from tiktoken-style ranks.

    Every split of a token into two smaller tokens is a merge producing it; merges are ordered by
    the rank of the token they produce, then by the ranks of the two parts. For Llama-3 this
    yields exactly the 280147 merges of the published tokenizer.json.
    """
    rank = {tok: r for r, tok in enumerate(by_rank)}
    merges: list[tuple[bytes, bytes]] = []
    for tok in by_rank:  # already in rank order
        if len(tok) < 2:
            continue
        splits = [
            (rank[tok[:i]], rank[tok[i:]], tok[:i], tok[i:])
            for i in range(1, len(tok))
            if tok[:i] in rank and tok[i:] in rank
        ]
        splits.sort()
        merges.extend((left, right) for _, _, left, right in splits)
    return merges


# --- the tokenizer ------------------------------------------------------------------------------


def _tokenizers() -> Any:
    """The Hugging Face `tokenizers` package, or one error line saying how to get it."""
    try:
        import tokenizers
    except ImportError:
        raise UsageError(
            "making a dummy checkpoint needs the tokenizers package, which is not installed.",
            hint="pip install 'tokenizers>=0.20,<1'",
        ) from None
    return tokenizers


@dataclass
class BPETokenizer:
    """A Llama-3-style byte-level BPE tokenizer: regular tokens (ids 0..), then special tokens."""

    hf: tokenizers.Tokenizer  # the `tokenizers` object; its to_str() is tokenizer.json
    n_regular: int  # ids below this are BPE tokens, the rest are `specials`
    specials: list[str]
    source: str  # "llama3 ranks (quicktok)" or "trained on embedded text"

    @property
    def vocab_size(self) -> int:
        return self.n_regular + len(self.specials)

    def special_id(self, content: str) -> int:
        return self.n_regular + self.specials.index(content)

    @property
    def bos_id(self) -> int:
        return self.special_id(BOS_TOKEN)

    @property
    def eos_id(self) -> int:
        return self.special_id(EOS_TOKEN)

    @property
    def eot_id(self) -> int:
        return self.special_id(EOT_TOKEN)


def _special_names(n: int) -> list[str]:
    extra = [f"<|reserved_special_token_{i}|>" for i in range(5, 5 + n - MIN_SPECIALS)]
    return _NAMED_SPECIALS + extra


#: The trainer stops at this many merges; larger vocabularies are padded with reserved specials.
MAX_TRAINED_MERGES = 1024


def build_tokenizer(vocab_size: int, *, use_llama3: bool = True) -> BPETokenizer:
    """A tokenizer with exactly `vocab_size` ids (the module docstring says where it comes from)."""
    if vocab_size < 256 + MIN_SPECIALS:
        raise UsageError(
            f"vocab size {vocab_size} is too small: a byte-level tokenizer needs at least "
            f"{256 + MIN_SPECIALS} ids (256 bytes + {MIN_SPECIALS} special tokens)."
        )
    tk = _tokenizers()
    real = llama3_ranks() if use_llama3 and vocab_size == LLAMA3_VOCAB_SIZE else None
    if real is not None:
        by_rank, specials = real
        vocab = {to_byte_level(t): i for i, t in enumerate(by_rank)}
        merges = [(to_byte_level(a), to_byte_level(b)) for a, b in merges_from_ranks(by_rank)]
        hf = _llama3_pipeline(tk, tk.models.BPE(vocab, merges, ignore_merges=True))
        source = "llama3 ranks (quicktok)"
    else:
        # Classic BPE over the pre-tokenized text: the 256 byte symbols (ids in GPT-2 order),
        # then the most frequent pair merged, repeatedly, while some pair occurs twice.
        hf = _llama3_pipeline(tk, tk.models.BPE(ignore_merges=True))
        n_merges = min(vocab_size - 256 - MIN_SPECIALS, MAX_TRAINED_MERGES)
        trainer = tk.trainers.BpeTrainer(
            vocab_size=256 + n_merges,
            min_frequency=2,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator([_CORPUS], trainer)
        specials = _special_names(vocab_size - hf.get_vocab_size())
        source = "trained on embedded text"
    n_regular = hf.get_vocab_size()
    hf.add_special_tokens([tk.AddedToken(s, special=True, normalized=False) for s in specials])
    tok = BPETokenizer(hf, n_regular, specials, source)
    # Llama-3's post-processor: byte-level offsets, then BOS before each sequence.
    hf.post_processor = tk.processors.Sequence(
        [
            tk.processors.ByteLevel(trim_offsets=False),
            tk.processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, tok.bos_id)],
            ),
        ]
    )
    return tok


def _llama3_pipeline(tk: Any, model: Any) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` around a BPE model with Llama-3's pre-tokenizer and decoder."""
    hf = tk.Tokenizer(model)
    hf.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = tk.decoders.ByteLevel()
    return hf


# --- HF files -----------------------------------------------------------------------------------


def tokenizer_json(tok: BPETokenizer) -> dict[str, Any]:
    """The HF `tokenizers` document (Llama-3 layout), as that library serialises it."""
    return json.loads(tok.hf.to_str())


def tokenizer_config_json(tok: BPETokenizer, model_max_length: int) -> dict[str, Any]:
    """transformers' tokenizer_config.json: the special tokens, BOS handling, chat template."""
    special = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    decoder = {
        str(tok.n_regular + i): {"content": s, **special, "special": True}
        for i, s in enumerate(tok.specials)
    }
    return {
        "added_tokens_decoder": decoder,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_tokenizer_files(folder: Path, tok: BPETokenizer, model_max_length: int) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`."""
    folder = Path(folder)
    # tokenizer.json as `tokenizers` writes it; compact for a real-size (multi-MB) vocabulary.
    texts = {"tokenizer.json": tok.hf.to_str(pretty=tok.vocab_size <= 4096)}
    docs = {
        "tokenizer_config.json": tokenizer_config_json(tok, model_max_length),
        "special_tokens_map.json": {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN},
    }
    texts.update(
        {name: json.dumps(doc, indent=2, ensure_ascii=False) for name, doc in docs.items()}
    )
    written = []
    for name, text in texts.items():
        path = folder / name
        path.write_text(text + "\n", encoding="utf-8")
        written.append(path)
    return written
