"""Hugging Face `tokenizer.json` (byte-level BPE) → llama.cpp's GGUF tokenizer keys.

The 2B-4T tokenizer is Llama-3's: BPE over bytes, no `tokenizer.model`. llama.cpp reads it as
`tokenizer.ggml.model = "gpt2"` with the `llama-bpe` pre-tokenizer (spec §4.1, trap 19).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import GGUFValueType, Keys, TokenType
from ..errors import CorruptFileError, InputNotFoundError, UnsupportedArchitectureError

#: The end-of-turn token of Llama-3 chat templates (2B-4T ends every turn with it).
EOT_TOKEN = "<|eot_id|>"


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

    def kv_items(self) -> list[tuple[str, Any, GGUFValueType | None]]:
        """The GGUF keys, as (key, value, value type or element type) in writing order."""
        items: list[tuple[str, Any, GGUFValueType | None]] = [
            (Keys.TOKENIZER_MODEL, self.model, GGUFValueType.STRING),
            (Keys.TOKENIZER_PRE, self.pre, GGUFValueType.STRING),
            (Keys.TOKENIZER_TOKENS, self.tokens, GGUFValueType.STRING),
            (Keys.TOKENIZER_TOKEN_TYPE, self.token_types, GGUFValueType.INT32),
            (Keys.TOKENIZER_MERGES, self.merges, GGUFValueType.STRING),
        ]
        for key, value in (
            (Keys.TOKENIZER_BOS_ID, self.bos_id),
            (Keys.TOKENIZER_EOS_ID, self.eos_id),
            (Keys.TOKENIZER_EOT_ID, self.eot_id),
            (Keys.TOKENIZER_PAD_ID, self.pad_id),
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
    """Read `tokenizer.json` (+ `tokenizer_config.json`) of `folder` into a Vocab.

    Tokens are ordered by id and padded to `config["vocab_size"]` with `[PAD{i}]` tokens of
    type UNUSED, so the token list matches the embedding's rows.
    """
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InputNotFoundError(
            f"{folder} has no tokenizer.json (a byte-level BPE tokenizer is needed).",
            hint="download the full checkpoint folder, including its tokenizer files",
        )
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
        add_bos=True,  # the 2B-4T prompt format starts with <|begin_of_text|>
    )
