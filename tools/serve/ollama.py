"""Ollama's REST API on top of llama-server's native `/completion`.

Requests are checked here (a wrong field is a 400 that names it), turned into one `/completion`
request (chat messages go through the model's own template, rendered by llama-server's
`/apply-template`), and llama-server's replies are turned into Ollama's objects: NDJSON pieces,
then a final object with `done`, `done_reason` and durations in nanoseconds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .catalog import ModelEntry


class HTTPError(Exception):
    """An error reply: HTTP status and message (`{"error": message}` on Ollama routes)."""

    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "number": (int, float),
    "dict": (dict,),
    "list": (list,),
}


def field(body: dict[str, Any], name: str, kind: str, default: Any = None, where: str = "") -> Any:
    """`body[name]` when it has type `kind` (or is absent/null: `default`); else a 400 naming
    the field."""
    value = body.get(name)
    if value is None:
        return default
    is_bool = isinstance(value, bool)  # JSON true is not a number
    if not isinstance(value, _TYPES[kind]) or (is_bool and kind != "bool"):
        label = f"{where}{name}"
        raise HTTPError(400, f"field '{label}' must be of type {kind}, got {type(value).__name__}")
    return value


#: Ollama option -> (llama-server /completion field, type)
OPTIONS: dict[str, tuple[str, str]] = {
    "temperature": ("temperature", "number"),
    "top_k": ("top_k", "int"),
    "top_p": ("top_p", "number"),
    "min_p": ("min_p", "number"),
    "typical_p": ("typical_p", "number"),
    "seed": ("seed", "int"),
    "num_predict": ("n_predict", "int"),
    "repeat_penalty": ("repeat_penalty", "number"),
    "repeat_last_n": ("repeat_last_n", "int"),
    "presence_penalty": ("presence_penalty", "number"),
    "frequency_penalty": ("frequency_penalty", "number"),
    "num_keep": ("n_keep", "int"),
    "stop": ("stop", "list"),
    "num_ctx": ("", "int"),  # the context is set when the model loads (-c); checked, not sent
}


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The llama-server sampling fields for an Ollama request's `options`."""
    options = field(body, "options", "dict", {})
    params: dict[str, Any] = {}
    for key, value in options.items():
        if key not in OPTIONS:
            continue  # Ollama ignores options a runner does not know; so do we
        target, kind = OPTIONS[key]
        value = field(options, key, kind, where="options.")
        if value is None or not target:
            continue
        if key == "stop" and not all(isinstance(s, str) for s in value):
            raise HTTPError(400, "field 'options.stop' must be a list of strings")
        params[target] = value
    fmt = body.get("format")
    if fmt == "json":
        params["json_schema"] = {}
    elif isinstance(fmt, dict):
        params["json_schema"] = fmt
    elif fmt not in (None, ""):
        raise HTTPError(400, "field 'format' must be \"json\" or a JSON schema object")
    return params


def clamp_predict(params: dict[str, Any], n_ctx: int, key: str = "n_predict") -> str | None:
    """Clamp a token budget beyond the context to the context; the reason, or None."""
    n = params.get(key)
    if isinstance(n, int) and n_ctx and n > n_ctx:
        params[key] = n_ctx
        return f"{key} {n} exceeds the context of {n_ctx} tokens; clamped to {n_ctx}"
    return None


def messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The `messages` of /api/chat, checked: a list of {role, content} strings."""
    items = field(body, "messages", "list", [])
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise HTTPError(400, f"field 'messages[{i}]' must be an object")
        role = field(m, "role", "str", where=f"messages[{i}].")
        content = field(m, "content", "str", "", where=f"messages[{i}].")
        if not role:
            raise HTTPError(400, f"field 'messages[{i}].role' is required")
        out.append({"role": role, "content": content})
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Reply:
    """Shapes Ollama objects for one request: /api/generate (`response`) or /api/chat
    (`message`)."""

    entry: ModelEntry
    chat: bool
    load_ns: int
    started_ns: int
    warning: str | None = None

    def piece(self, text: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.entry.name, "created_at": now_iso()}
        if self.chat:
            obj["message"] = {"role": "assistant", "content": text}
        else:
            obj["response"] = text
        obj["done"] = False
        return obj

    def final(self, last: dict[str, Any], end_ns: int, text: str = "") -> dict[str, Any]:
        """The closing object, from llama-server's last /completion reply (timings, stop)."""
        obj = self.piece(text)
        t = last.get("timings") or {}
        stop_type = last.get("stop_type", "")
        obj.update(
            done=True,
            done_reason="length" if stop_type == "limit" else "stop",
            total_duration=end_ns - self.started_ns,
            load_duration=self.load_ns,
            prompt_eval_count=int(t.get("prompt_n", last.get("tokens_evaluated", 0)) or 0),
            prompt_eval_duration=int(float(t.get("prompt_ms", 0)) * 1e6),
            eval_count=int(t.get("predicted_n", last.get("tokens_predicted", 0)) or 0),
            eval_duration=int(float(t.get("predicted_ms", 0)) * 1e6),
        )
        if self.warning:
            obj["warning"] = self.warning
        return obj


def show(entry: ModelEntry) -> dict[str, Any]:
    """The /api/show object."""
    return {
        "license": "",
        "modelfile": f"FROM {entry.path}\n",
        "parameters": "",
        "template": entry.chat_template,
        "details": entry.details(),
        "model_info": entry.info,
        "capabilities": ["completion"],
        "modified_at": entry.modified_at,
    }
