"""Chat prompts: the model's chat template (`chat_template.jinja`, or `chat_template` in
tokenizer_config.json, as Hugging Face saves them) rendered with jinja2 in a sandbox, the way
transformers renders it, without transformers. A deployment without a template (the mock engine)
gets FALLBACK_TEMPLATE, and the gateway says so when it starts.

`load_chat_template` reads the files; rendering is pure."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tsslurm.errors import UserError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
"""One `role: content` line per message, then `assistant:`."""


class TemplateError(UserError):
    """A chat template that does not compile, or a conversation it refuses."""


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 origin: str = "fallback"):
        import jinja2
        import jinja2.ext
        import jinja2.sandbox

        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as error:
            raise TemplateError(f"the chat template of {origin} does not compile: {error}") from None
        self._errors: tuple[type[Exception], ...] = (jinja2.TemplateError, TypeError, ValueError)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.origin = origin

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError:
            raise
        except self._errors as error:
            raise TemplateError(f"the chat template cannot render these messages: {error}") from None


def load_chat_template(model_dir: Path | None) -> ChatTemplate:
    """The template beside the deployment's tokenizer, or the fallback."""
    if model_dir is None:
        return ChatTemplate(FALLBACK_TEMPLATE)
    config = _tokenizer_config(model_dir)
    tokens = {"bos_token": _token_text(config.get("bos_token")),
              "eos_token": _token_text(config.get("eos_token"))}
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return ChatTemplate(jinja_file.read_text(), origin=str(jinja_file), **tokens)
    source = _config_template(config.get("chat_template"))
    if source is not None:
        return ChatTemplate(source, origin=str(model_dir / "tokenizer_config.json"), **tokens)
    return ChatTemplate(FALLBACK_TEMPLATE, **tokens)


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    file = model_dir / "tokenizer_config.json"
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise TemplateError(f"cannot read {file}: {error}") from None
    if not isinstance(config, dict):
        raise TemplateError(f"{file} is not a JSON object")
    return config


def _config_template(value: object) -> str | None:
    """`chat_template` is a string, or a list of {"name", "template"} (the "default" one is used)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value
                 if isinstance(entry, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _token_text(value: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refuses these messages: {message}")
