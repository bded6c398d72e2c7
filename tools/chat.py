"""A chat session over the Python API: the history, fitting it into the context, slash commands.

`bitnet chat` (cli/chat.py) is the terminal loop around this; everything that decides what the
model sees lives here, so it is tested without a terminal. The history is a list of user and
assistant turns (plus an optional system message); before each reply the whole conversation is
rendered with the model's chat template, and while it does not leave `min_reply` tokens free in
the context the oldest exchange (a user turn and its reply) is dropped. llama.cpp keeps the KV
cache of the common prefix between turns, so only new text is evaluated unless turns were dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .fsutil import atomic_output

if TYPE_CHECKING:
    from .llm import LLM, TextStream

Message = dict[str, str]

#: name -> (argument, help line); the order is the order of /help.
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("", "show this list"),
    "reset": ("", "forget the conversation (the system message stays)"),
    "system": ("TEXT", "set the system message (empty: none) and start afresh"),
    "save": ("FILE", "write the conversation to FILE as JSON (/save FILE --force overwrites)"),
    "exit": ("", "leave (so does Ctrl-D); Ctrl-C stops a reply"),
}
ALIASES = {"quit": "exit", "bye": "exit", "?": "help", "clear": "reset"}


def help_lines() -> list[str]:
    """The /help text, one line per command."""
    width = max(len(f"/{n} {a}".rstrip()) for n, (a, _) in COMMANDS.items())
    return [f"  {f'/{n} {a}'.rstrip():<{width}}  {h}" for n, (a, h) in COMMANDS.items()]


@dataclass(frozen=True)
class Command:
    name: str
    arg: str = ""


def parse_command(line: str) -> Command | None:
    """The slash command on `line`, None if it is a message (`//text` sends `/text`);
    UsageError for an unknown command."""
    text = line.strip()
    if not text.startswith("/") or text.startswith("//"):
        return None
    name, _, arg = text[1:].partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in COMMANDS:
        raise UsageError(f"unknown command /{name}.", hint="/help lists the commands")
    return Command(name, arg.strip())


@dataclass
class Reply:
    """A reply being streamed, and what was done to the history to make room for it."""

    stream: TextStream
    dropped: int  # exchanges (user turn + reply) dropped to fit the context
    prompt_tokens: int


@dataclass
class ChatSession:
    """The conversation with one loaded model."""

    llm: LLM
    system: str | None = None
    #: tokens kept free for the reply when fitting the history into the context
    min_reply: int = 256
    #: user and assistant turns, alternating, oldest first
    turns: list[Message] = field(default_factory=list)
    #: tokens per reply at most (-1: until end of turn or the context is full)
    max_reply: int = -1
    #: sampling options for every reply (LLM.generate keyword arguments: temperature, top_k, ...)
    sampling: dict[str, Any] = field(default_factory=dict)

    def messages(self, turns: Sequence[Message] | None = None) -> list[Message]:
        """The conversation as the chat template sees it (system message first)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.turns if turns is None else turns)

    def fit(self, user_text: str) -> tuple[list[int], int]:
        """Token ids for the history plus `user_text`, dropping the oldest exchanges until
        `min_reply` tokens stay free; returns (ids, exchanges dropped). Dropped turns leave the
        history for good. UsageError when even the system message and this message do not fit."""
        pending = [{"role": "user", "content": user_text}]
        room = self.llm.n_ctx - min(self.min_reply, self.llm.n_ctx // 2)
        dropped = 0
        while True:
            ids = self.llm.chat_tokens(self.messages(self.turns + pending))
            if len(ids) <= room or not self.turns:
                break
            del self.turns[:2]  # the oldest user turn and its reply
            dropped += 1
        if len(ids) > room:
            raise UsageError(
                f"this message needs {len(ids)} tokens with the system message and the context "
                f"holds {self.llm.n_ctx} (leaving {self.llm.n_ctx - room} for the reply).",
                hint="send a shorter message, or restart with a larger -c",
            )
        return ids, dropped

    def ask(self, user_text: str) -> Reply:
        """Start the reply to `user_text`; call `commit` with what was shown when it ends."""
        ids, dropped = self.fit(user_text)
        stream = self.llm.generate(ids, stream=True, max_tokens=self.max_reply, **self.sampling)
        return Reply(stream, dropped, len(ids))  # type: ignore[arg-type]

    def commit(self, user_text: str, reply_text: str) -> None:
        """Add an exchange to the history (a reply stopped early is kept as it was shown)."""
        self.turns += [
            {"role": "user", "content": user_text},
            {"role": "assistant", "content": reply_text},
        ]

    def reset(self) -> None:
        self.turns.clear()

    def set_system(self, text: str) -> None:
        self.system = text or None
        self.reset()

    def save(self, path: Path, force: bool = False) -> Path:
        """Write the conversation as JSON: {"model", "system", "messages"}."""
        doc = {
            "model": str(self.llm.path),
            "system": self.system,
            "messages": self.messages(),
        }
        try:
            with atomic_output(path, force) as tmp:
                tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}.") from exc
        return path
