"""Hugging Face tokenizers → llama.cpp's GGUF tokenizer keys.

Two kinds, chosen by the files the checkpoint has (never by its name):

* `tokenizer.model` (SentencePiece, 1bitLLM): `tokenizer.ggml.model = "llama"`, pre `default`,
  pieces with their scores and types read straight from the protobuf (spec §4.2);
* `tokenizer.json` (byte-level BPE, 2B-4T / Llama-3 / Falcon3 / Falcon-E): `gpt2` with a
  pre-tokenizer named the way llama.cpp's converter names it — by the sha256 of the token ids the
  tokenizer gives a fixed probe text (`llama-bpe`, `falcon3`, `falcon_e`). Without the
  `tokenizers` package, or for a hash we do not know, a tokenizer that splits with the Llama-3
  regex is written as `llama-bpe`: llama.cpp runs all three names with that one regex (trap 19).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import GGUFValueType, Keys, TokenType
from ..errors import CorruptFileError, InputNotFoundError, UnsupportedArchitectureError

#: The end-of-turn token of Llama-3 chat templates (2B-4T ends every turn with it).
EOT_TOKEN = "<|eot_id|>"

#: llama.cpp's pre-tokenizer probe text (ref: the pinned tree's conversion/base.py
#: `get_vocab_base_pre`): the sha256 of str(token ids) names the pre-tokenizer.
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emo"
    "jis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 ក"
    "ាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````"
    "\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I"
    "'ll make it, 'D you like some tea? We'Ve a'lL"
)
#: sha256 of the probe's ids → the name llama.cpp knows (ref: the same table; falcon_e from
#: bitnet.cpp's converter, whose Falcon-E hash upstream calls falcon-h1: both are Llama-3 regex).
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon_e",
}


@dataclass
class Vocab:
    """A tokenizer as llama.cpp wants it: tokens by id, their types, merges and special ids."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    pad_id: int | None
    chat_template: str | None
    model: str = "gpt2"
    pre: str = "llama-bpe"
    add_bos: bool = True
    #: SentencePiece piece scores (tokenizer.ggml.scores); empty for BPE.
    scores: list[float] = field(default_factory=list)
    unk_id: int | None = None

    def kv_items(self) -> list[tuple[str, Any, GGUFValueType | None]]:
        """The GGUF keys, as (key, value, value type or element type) in writing order."""
        items: list[tuple[str, Any, GGUFValueType | None]] = [
            (Keys.TOKENIZER_MODEL, self.model, GGUFValueType.STRING),
            (Keys.TOKENIZER_PRE, self.pre, GGUFValueType.STRING),
            (Keys.TOKENIZER_TOKENS, self.tokens, GGUFValueType.STRING),
            (Keys.TOKENIZER_TOKEN_TYPE, self.token_types, GGUFValueType.INT32),
        ]
        if self.scores:
            items.append((Keys.TOKENIZER_SCORES, self.scores, GGUFValueType.FLOAT32))
        if self.merges or self.model == "gpt2":  # llama.cpp's BPE needs the key, even empty
            items.append((Keys.TOKENIZER_MERGES, self.merges, GGUFValueType.STRING))
        for key, value in (
            (Keys.TOKENIZER_BOS_ID, self.bos_id),
            (Keys.TOKENIZER_EOS_ID, self.eos_id),
            (Keys.TOKENIZER_EOT_ID, self.eot_id),
            (Keys.TOKENIZER_PAD_ID, self.pad_id),
            (Keys.TOKENIZER_UNK_ID, self.unk_id),
        ):
            if value is not None:
                items.append((key, int(value), GGUFValueType.UINT32))
        items.append((Keys.TOKENIZER_ADD_BOS, self.add_bos, GGUFValueType.BOOL))
        if self.chat_template:
            items.append((Keys.CHAT_TEMPLATE, self.chat_template, GGUFValueType.STRING))
        return items


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # also > 4300-digit ints, deep nesting
        raise CorruptFileError(
            f"{path.name} in {path.parent} is not valid JSON ({exc.__class__.__name__}).",
            hint="download the checkpoint again (bitnet convert REPO-ID fetches it from the hub)",
        ) from None


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores special tokens as strings or as {"content": ...} dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_id(
    name: str, config: dict[str, Any], tok_config: dict[str, Any], ids: dict[str, int]
) -> int | None:
    """`bos`/`eos`/`pad` id: config.json's integer first, else tokenizer_config's token text."""
    value = config.get(f"{name}_token_id")
    if isinstance(value, list):  # generation configs list several eos ids; the first is primary
        value = value[0] if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**32:  # GGUF stores the id as uint32
            raise CorruptFileError(f"config.json has an invalid {name}_token_id ({value}).")
        return value
    text = _token_text(tok_config.get(f"{name}_token"))
    return ids.get(text) if text is not None else None


def _chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        return template
    jinja = folder / "chat_template.jinja"  # newer transformers save it beside the config
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return None


def load_vocab(folder: Path, config: dict[str, Any]) -> Vocab:
    """Read the tokenizer of `folder` into a Vocab: `tokenizer.model` (SentencePiece) when the
    folder has one, else `tokenizer.json` (byte-level BPE); `tokenizer_config.json` and
    `added_tokens.json` add special tokens and the chat template.

    Tokens are ordered by id and padded to `config["vocab_size"]` with `[PAD{i}]` tokens of
    type UNUSED, so the token list matches the embedding's rows.
    """
    if (folder / "tokenizer.model").is_file():
        return _load_sentencepiece(folder, config)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InputNotFoundError(
            f"{folder} has neither tokenizer.model nor tokenizer.json.",
            hint="download the full checkpoint folder, including its tokenizer files",
        )
    return _load_bpe(folder, path, config)


def _load_bpe(folder: Path, path: Path, config: dict[str, Any]) -> Vocab:
    tok = _read_json(path)
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise CorruptFileError(f"{path} has no model.vocab table.")
    if model.get("type") != "BPE":
        raise UnsupportedArchitectureError(
            f"tokenizer model {model.get('type')!r} is not supported; only byte-level BPE is.",
            hint="convert a checkpoint with a Llama-3 style tokenizer.json",
        )
    pre = pre_tokenizer_name(path, tok)

    # --- tokens by id: the BPE vocab plus added tokens -----------------------------------------
    by_id: dict[int, str] = {}
    for text, idx in model["vocab"].items():
        if not isinstance(idx, int) or idx < 0:
            raise CorruptFileError(f"{path}: token {text!r} has invalid id {idx!r}.")
        by_id[idx] = text
    special: set[int] = set()
    added: set[int] = set()
    for entry in tok.get("added_tokens") or []:
        idx, text = entry.get("id"), entry.get("content")
        if not isinstance(idx, int) or idx < 0 or not isinstance(text, str):
            raise CorruptFileError(f"{path}: malformed added token {entry!r}.")
        by_id[idx] = text
        added.add(idx)
        if entry.get("special", False):
            special.add(idx)

    vocab_size = int(config.get("vocab_size") or (max(by_id) + 1 if by_id else 0))
    if by_id and max(by_id) >= vocab_size:
        raise CorruptFileError(
            f"{path} has token id {max(by_id)}, beyond the model's vocab_size {vocab_size}.",
            hint="check that config.json and tokenizer.json come from the same model",
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        else:
            tokens.append(text)
            if i in special:
                types.append(int(TokenType.CONTROL))
            elif i in added:
                # Non-special added tokens must stay whole in llama.cpp's tokenizer.
                types.append(int(TokenType.USER_DEFINED))
            else:
                types.append(int(TokenType.NORMAL))

    # --- merges: "a b" strings or ["a", "b"] pairs ------------------------------------------
    merges: list[str] = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            merges.append(f"{m[0]} {m[1]}")
        else:
            raise CorruptFileError(f"{path}: malformed merge {m!r}.")

    ids = {text: i for i, text in enumerate(tokens)}
    return Vocab(
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=_special_id("bos", config, tok_config, ids),
        eos_id=_special_id("eos", config, tok_config, ids),
        eot_id=ids.get(EOT_TOKEN),
        pad_id=_special_id("pad", config, tok_config, ids),
        chat_template=_chat_template(folder, tok_config),
        pre=pre,
        add_bos=True,  # Llama-3 style prompts start with <|begin_of_text|>
    )


def _split_patterns(node: Any) -> list[str]:
    """Every `Split` regex in a tokenizer.json pre_tokenizer tree."""
    if isinstance(node, list):
        return [p for item in node for p in _split_patterns(item)]
    if not isinstance(node, dict):
        return []
    found = []
    if node.get("type") == "Split" and isinstance(node.get("pattern"), dict):
        regex = node["pattern"].get("Regex")
        if isinstance(regex, str):
            found.append(regex)
    for key in ("pretokenizers", "pre_tokenizers"):
        found += _split_patterns(node.get(key))
    return found


def probe_hash(path: Path) -> str | None:
    """llama.cpp's pre-tokenizer hash of a tokenizer.json, or None without `tokenizers`."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        ids = Tokenizer.from_file(str(path)).encode(PROBE_TEXT).ids
    except Exception:  # a tokenizer file `tokenizers` cannot run: decide from its structure
        return None
    return hashlib.sha256(str(ids).encode()).hexdigest()


def pre_tokenizer_name(path: Path, tok: dict[str, Any]) -> str:
    """The `tokenizer.ggml.pre` of a byte-level BPE tokenizer.json (see the module doc)."""
    from ..hf_tokenizer import LLAMA3_PATTERN

    name = KNOWN_PRE_HASHES.get(probe_hash(path) or "")
    if name is not None:
        return name
    if LLAMA3_PATTERN in _split_patterns(tok.get("pre_tokenizer")):
        return "llama-bpe"
    raise UnsupportedArchitectureError(
        f"{path} uses a pre-tokenizer we cannot write (known: "
        f"{', '.join(sorted(set(KNOWN_PRE_HASHES.values())))}, or any Llama-3 regex split).",
        hint="convert a checkpoint with a Llama-3, Falcon3 or Falcon-E tokenizer",
    )


# --- SentencePiece ------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def proto_fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message: varints as int, fixed32 as the
    4 raw bytes, length-delimited as bytes (ref: protobuf encoding; SentencePiece's
    sentencepiece_model.proto)."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        out.append((num, wire, value))
    return out


#: SentencePiece piece types (ModelProto.SentencePiece.Type) → llama.cpp token types.
_SP_TYPES = {1: TokenType.NORMAL, 2: TokenType.UNKNOWN, 3: TokenType.CONTROL,
             4: TokenType.USER_DEFINED, 5: TokenType.UNUSED, 6: TokenType.BYTE}  # fmt: skip


def _pad_pieces(tokens: list[str], scores: list[float], types: list[int], n: int) -> None:
    """Append UNUSED `[PAD{i}]` tokens until there are `n` (ids no piece or added token has)."""
    while len(tokens) < n:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))


def _load_sentencepiece(folder: Path, config: dict[str, Any]) -> Vocab:
    path = folder / "tokenizer.model"
    try:
        fields_ = proto_fields(path.read_bytes())
        pieces: list[tuple[str, float, int]] = []
        spec_ids = {"unk": 0, "bos": 1, "eos": 2, "pad": -1}  # TrainerSpec defaults
        for num, wire, value in fields_:
            if num == 1 and wire == 2:  # repeated SentencePiece pieces
                text, score, kind = "", 0.0, 1
                for n, w, v in proto_fields(value):
                    if n == 1 and w == 2:
                        text = v.decode("utf-8")
                    elif n == 2 and w == 5:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3 and w == 0:
                        kind = v
                pieces.append((text, score, kind))
            elif num == 2 and wire == 2:  # TrainerSpec: unk/bos/eos/pad ids (fields 40-43)
                for n, w, v in proto_fields(value):
                    if w == 0 and 40 <= n <= 43:
                        spec_ids[("unk", "bos", "eos", "pad")[n - 40]] = v - (1 << 64) * (v >> 63)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(
            f"{path} is not a SentencePiece model ({exc}).", hint="re-download tokenizer.model"
        ) from None
    if not pieces:
        raise CorruptFileError(f"{path} holds no pieces.", hint="re-download tokenizer.model")
    if any(kind not in _SP_TYPES for _, _, kind in pieces):
        raise UnsupportedArchitectureError(f"{path} has piece types we cannot write.")

    tokens = [p[0] for p in pieces]
    scores = [float(p[1]) for p in pieces]
    types = [int(_SP_TYPES[p[2]]) for p in pieces]
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    added_path = folder / "added_tokens.json"
    added = _read_json(added_path) if added_path.is_file() else {}
    for entry in (tok_config.get("added_tokens_decoder") or {}).items():
        idx, info = entry
        if isinstance(info, dict) and isinstance(info.get("content"), str):
            added.setdefault(info["content"], int(idx))
    vocab_size = int(config.get("vocab_size") or len(tokens))
    for text, idx in sorted(added.items(), key=lambda kv: kv[1]):
        if not isinstance(idx, int) or idx < len(pieces):
            continue  # a piece the model already has (e.g. <unk>, <s>, </s>)
        if idx >= vocab_size:
            raise CorruptFileError(
                f"added token {text!r} has id {idx}, beyond vocab_size {vocab_size}.",
                hint="check that config.json and the tokenizer files belong together",
            )
        _pad_pieces(tokens, scores, types, idx)
        tokens.append(text)
        scores.append(-1000.0)
        types.append(int(TokenType.USER_DEFINED))
    if len(tokens) > vocab_size:
        raise CorruptFileError(
            f"{path} has {len(tokens)} tokens, more than the model's vocab_size {vocab_size}.",
            hint="check that config.json and the tokenizer files belong together",
        )
    _pad_pieces(tokens, scores, types, vocab_size)

    ids = {text: i for i, text in enumerate(tokens)}

    def special(name: str) -> int | None:
        found = _special_id(name, config, tok_config, ids)
        if found is not None:
            return found
        return spec_ids[name] if 0 <= spec_ids[name] < len(tokens) else None

    return Vocab(
        tokens=tokens,
        token_types=types,
        merges=[],
        bos_id=special("bos"),
        eos_id=special("eos"),
        eot_id=None,
        pad_id=special("pad"),
        chat_template=_chat_template(folder, tok_config),
        model="llama",
        pre="default",
        add_bos=True,  # Llama-2 style SentencePiece prompts start with <s>
        scores=scores,
        unk_id=spec_ids["unk"] if 0 <= spec_ids["unk"] < len(tokens) else None,
    )
