"""Chat templates: a conversation as the exact text a chat model was trained on.

A chat model learned its conversations in one fixed layout, for SmolLM2::

    <|im_start|>user
    Hi!<|im_end|>
    <|im_start|>assistant

and answers well only when it is shown that layout again. Model files ship
the layout as a Jinja template (tokenizer_config.json's "chat_template", or
GGUF's ``tokenizer.chat_template``), rendered with the variables
``messages`` (a list of {"role": ..., "content": ...}),
``add_generation_prompt`` (end with the opening of the assistant's turn),
``bos_token`` / ``eos_token`` ... It is rendered here the way Hugging Face's
transformers renders it, so the text is the one the model saw: a sandboxed
environment (a template from a file cannot reach Python's internals),
``trim_blocks`` and ``lstrip_blocks`` (a line holding only a ``{% ... %}``
tag leaves no blank line), ``tojson`` that keeps non-ASCII characters,
``raise_exception(msg)`` for templates that reject a conversation, and
``strftime_now(fmt)``.

jinja2 is an extra (``pip install -e ".[chat]"``), imported only when a
template is rendered.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime

from ..errors import ScratchError

_MISSING = ('chat templates are rendered with jinja2, which is not installed: pip install -e ".[chat]" '
            '(or pip install jinja2)')


def _jinja():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise ScratchError(_MISSING) from None
    return jinja2


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    jinja2 = _jinja()

    class _Generation(jinja2.ext.Extension):
        # {% generation %}...{% endgeneration %} marks the assistant's part for
        # training masks; for rendering, its body is just text.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja2's own tojson escapes <, > and & for HTML, which is not what the model saw.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise ScratchError(f"the chat template is not a valid Jinja template: {_one_line(e)}") from None


def render(template: str, messages, add_generation_prompt: bool = True, **variables) -> str:
    """The text of a conversation laid out by a chat template.

    messages: a list of dicts with "role" and "content". variables: what else
    the template may read (bos_token, eos_token, tools, documents, ...).
    Any failure is one line: a template that raises (raise_exception, an
    unknown filter, a wrong type) or that is not valid Jinja.
    """
    if not isinstance(template, str) or not template:
        raise ScratchError("this tokenizer has no chat template")
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise ScratchError('messages must be a list of dicts like {"role": "user", "content": "Hi!"}')
    compiled = _compile(template)
    jinja2 = _jinja()
    try:
        return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=bool(add_generation_prompt),
                               **variables)
    except jinja2.exceptions.TemplateError as e:
        raise ScratchError(f"the chat template failed to render this conversation: {_one_line(e)}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise ScratchError(f"the chat template failed to render this conversation: "
                           f"{type(e).__name__}: {_one_line(e)}") from None
