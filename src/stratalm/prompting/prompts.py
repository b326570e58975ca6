"""From a task's rows to the texts a model reads: templates rendered with jinja2 (in a sandbox: a
task file is code from whoever wrote it), answers, and the few-shot prompt.

A prompt is the description, then each demonstration (its text, the target delimiter, its answer)
followed by the few-shot delimiter, then the question; as in lm-evaluation-harness. A cloze keeps
the same layout with the encoder's template, whose slot holds each demonstration's answer word.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError, DataError
from .tasks import GENERATE, SLOT, TaskSpec

_SENTINEL = "\x00slot\x00"  # stands for the cloze slot while the template renders


class Prompts:
    def __init__(self, spec: TaskSpec) -> None:
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ConfigError("prompted tasks render their templates with jinja2; install it with "
                              "pip install 'stratalm[prompting]'.") from None
        self.spec, self._errors = spec, (jinja2.TemplateError, jinja2.UndefinedError)
        self._env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        self._compiled: dict[str, Any] = {}

    # -- templates ---------------------------------------------------------------------------
    def render(self, template: str, doc: dict[str, Any]) -> str:
        if template not in self._compiled:
            try:
                self._compiled[template] = self._env.from_string(template)
            except self._errors[0] as exc:
                raise ConfigError(f"a template of task '{self.spec.task}' is not valid jinja2 ({exc}).") from None
        names = {k: v for k, v in doc.items() if isinstance(k, str) and k.isidentifier()}
        try:
            return self._compiled[template].render(**names, doc=doc)
        except self._errors[1] as exc:
            raise DataError(f"a template of task '{self.spec.task}' uses a column the data lacks ({exc}); its columns "
                            f"are: {', '.join(map(str, doc))}.") from None
        except self._errors[0] as exc:
            raise ConfigError(f"a template of task '{self.spec.task}' failed on a row ({exc}).") from None

    def text(self, doc: dict[str, Any]) -> str:
        return self.render(self.spec.doc_to_text, doc)

    def field(self, doc: dict[str, Any], name: str, key: str) -> Any:
        if "{{" in name:
            return self.render(name, doc)
        if name not in doc:
            raise DataError(f"{key} of task '{self.spec.task}' names the column '{name}', which the data lacks; its "
                            f"columns are: {', '.join(map(str, doc))}.")
        return doc[name]

    # -- answers -----------------------------------------------------------------------------
    def choices(self, doc: dict[str, Any]) -> list[str]:
        if self.spec.fixed_choices is not None:
            return self.spec.fixed_choices
        value = self.field(doc, self.spec.doc_to_choice, "doc_to_choice")
        if not isinstance(value, list) or len(value) < 2:
            raise DataError(f"the choices column of task '{self.spec.task}' must hold a list of two or more choices.")
        return [str(v) for v in value]

    def gold(self, doc: dict[str, Any]) -> int:
        """The index of the right choice: the target is an index or the text of a choice."""
        value, choices = self.field(doc, self.spec.doc_to_target, "doc_to_target"), self.choices(doc)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
            index = int(value)
            if 0 <= index < len(choices):
                return index
        elif str(value) in choices:
            return choices.index(str(value))
        raise DataError(f"the target {value!r} of task '{self.spec.task}' is neither the index nor the text of one of "
                        f"its choices ({', '.join(choices)}).")

    def target(self, doc: dict[str, Any]) -> str:
        """The answer as text: the right choice, or the target column of a generation task."""
        if self.spec.output_type == GENERATE:
            return str(self.field(doc, self.spec.doc_to_target, "doc_to_target"))
        return self.choices(doc)[self.gold(doc)]

    def words(self, doc: dict[str, Any]) -> list[str]:
        """A cloze's verbaliser: the cloze's own words, else the choices."""
        return list((self.spec.cloze or {}).get("choices") or self.choices(doc))

    # -- prompts -----------------------------------------------------------------------------
    def context(self, doc: dict[str, Any], demos: Sequence[dict[str, Any]]) -> str:
        spec = self.spec
        shown = "".join(self.text(d) + spec.target_delimiter + self.target(d) + spec.fewshot_delimiter for d in demos)
        return spec.description + shown + self.text(doc)

    def cloze_parts(self, doc: dict[str, Any], demos: Sequence[dict[str, Any]]) -> tuple[str, str]:
        """(text before the slot, text after it) of the question, demonstrations filled in."""
        spec = self.spec
        template = (spec.cloze or {}).get("template") or spec.doc_to_text + spec.target_delimiter + SLOT
        marked = template.replace(SLOT, _SENTINEL)

        def filled(d: dict[str, Any]) -> str:
            return self.render(marked, d).replace(_SENTINEL, self.words(d)[self.gold(d)])

        left, right = self.render(marked, doc).split(_SENTINEL)
        return spec.description + "".join(filled(d) + spec.fewshot_delimiter for d in demos) + left, right
