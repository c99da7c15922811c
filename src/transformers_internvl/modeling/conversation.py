"""`Conversation`: the object the original remote code exposes as `model.conv_template`.

Code written for the original `InternVLChatModel` reads `model.conv_template.sep` (the README's streaming recipe),
`.roles`, `.system_message`, and builds prompts with `.append_message(...)` / `.get_prompt()`. This class offers that
API, built from the template data of `chat_templates.TEMPLATES` and rendering exactly as the original
`internvl_chat/internvl/conversation.py`. `chat()` itself renders with the Jinja chat template
(`chat_prompts.py`); the tests check both renderers against the same reference prompts.
"""

from __future__ import annotations

import dataclasses

from ..chat_templates import TEMPLATES, SeparatorStyle, register_template, template_eos_token


@dataclasses.dataclass
class Conversation:
    """One conversation template plus the messages appended to it (a fresh copy comes from `get_conv_template`).

    Attributes:
        name: Template name, as in the model config's `template` field.
        system_template: System block with a `{system_message}` field.
        system_message: The system message (the template's default until changed).
        roles: `(user_role, assistant_role)` strings, emitted verbatim before each message.
        sep_style: How turns are joined.
        sep: Separator after each non-empty message; `sep.strip()` is the eos string chat() generates up to.
        sep2: Second separator (INTERNVL_ZH style only).
        stop_str: Extra stop string(s) of the template (not used by the original chat()).
        stop_token_ids: Extra stop token ids (none for InternVL templates).
        messages: `[role, message]` pairs; `message` None means "open turn".
    """

    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep_style: SeparatorStyle = SeparatorStyle.MPT
    sep: str = "\n"
    sep2: str | None = None
    stop_str: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    messages: list[list[str | None]] = dataclasses.field(default_factory=list)

    @property
    def eos_token(self) -> str:
        """The string whose token id the original chat()/batch_chat() pass as `eos_token_id`
        (`chat_templates.template_eos_token`: `sep.strip()`, or `sep2.strip()` for InternVL3.5 GPT-OSS)."""
        return template_eos_token(self.to_dict())

    @property
    def system_prompt(self) -> str:
        """The system block with the current system message filled in."""
        return self.system_template.format(system_message=self.system_message)

    def append_message(self, role: str, message: str | None) -> None:
        """Append a turn; `message=None` leaves the turn open (the generation prompt)."""
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        """Render the system block and all messages exactly as the original `Conversation.get_prompt()`."""
        if self.sep_style == SeparatorStyle.MPT:
            prompt = self.system_prompt + self.sep
            for role, message in self.messages:
                # An empty string is falsy in the original too: only the role is written, without separator.
                prompt += role + message + self.sep if message else role
            return prompt
        if self.sep_style == SeparatorStyle.MPT_TWO:
            prompt = self.system_prompt + self.sep
            last = len(self.messages) - 1
            for index, (role, message) in enumerate(self.messages):
                if message:
                    final_answer = index == last and role == self.roles[1]
                    prompt += role + message + (self.sep2 if final_answer else self.sep)
                else:
                    prompt += role
            return prompt
        if self.sep_style == SeparatorStyle.INTERNVL_ZH:
            separators = (self.sep2, self.sep)
            prompt = self.system_message + separators[0]
            for index, (role, message) in enumerate(self.messages):
                prompt += role + ": " + message + separators[index % 2] if message else role + ":"
            return prompt
        raise ValueError(f"Unsupported separator style {self.sep_style!r} in template {self.name!r}.")

    def copy(self) -> Conversation:
        """A deep-enough copy: the message list is new, so appending to the copy leaves this one unchanged."""
        return dataclasses.replace(
            self,
            messages=[list(turn) for turn in self.messages],
            stop_str=list(self.stop_str) if isinstance(self.stop_str, list) else self.stop_str,
            stop_token_ids=list(self.stop_token_ids) if self.stop_token_ids is not None else None,
        )

    def to_dict(self) -> dict:
        """The template's fields (without messages) as plain JSON-able data."""
        return {
            "name": self.name,
            "system_template": self.system_template,
            "system_message": self.system_message,
            "roles": list(self.roles),
            "sep_style": self.sep_style.value,
            "sep": self.sep,
            "sep2": self.sep2,
            "stop_str": self.stop_str,
            "stop_token_ids": self.stop_token_ids,
        }


# The one template registry is `chat_templates.TEMPLATES` (template data), which the processor, model loading (stop
# token) and chat() read; `CONV_TEMPLATES` is that same dict, and `get_conv_template` builds a `Conversation` from it.
CONV_TEMPLATES = TEMPLATES


def register_conv_template(template: Conversation, override: bool = False) -> None:
    """Add a template to the registry (`override=True` replaces an existing name); every path sees it."""
    register_template(template.to_dict(), override=override)


def get_conv_template(name: str) -> Conversation:
    """A fresh `Conversation` (no messages) of the registered template `name`."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a template name (str), got {type(name).__name__}.")
    if name not in TEMPLATES:
        raise ValueError(f"Unknown conversation template {name!r}; known templates: {sorted(TEMPLATES)}.")
    data = TEMPLATES[name]
    return Conversation(
        **{
            **data,
            "roles": tuple(data["roles"]),
            "sep_style": SeparatorStyle(data["sep_style"]),
            "stop_str": list(data["stop_str"]) if isinstance(data["stop_str"], list) else data["stop_str"],
            "stop_token_ids": list(data["stop_token_ids"]) if data["stop_token_ids"] is not None else None,
        }
    )


__all__ = ["CONV_TEMPLATES", "Conversation", "SeparatorStyle", "get_conv_template", "register_conv_template"]
