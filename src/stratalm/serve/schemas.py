"""The request bodies, as the OpenAI reference defines them, plus `top_k` and `repetition_penalty`.

Every model forbids extra fields: a field this server does not implement (best_of, suffix,
logit_bias, tools, ...) is a 400 that names it, never silently ignored. Types are strict, so
`"temperature": "hot"` or `"n": "2"` is a 400 too, not a guess."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

TokenIds = list[int]
Stop = Optional[Union[str, list[str]]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampled(Strict):
    """Fields shared by completions and chat."""
    model: str
    temperature: Optional[float] = Field(None, ge=0, le=2)  # None: 1, OpenAI's default; 0 stays 0 (greedy)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)  # extra: 0 or None = off
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    seed: Optional[int] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)  # extra: CTRL's, as `stratalm generate --repetition-penalty`
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None


class CompletionRequest(Sampled):
    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    max_tokens: Optional[int] = Field(16, ge=1)
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def plain(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text, **({"name": self.name} if self.name else {})}


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)  # deprecated by OpenAI, still accepted
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class EmbeddingRequest(Strict):
    model: str
    input: Union[str, list[str], TokenIds, list[TokenIds]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


class TokenizeRequest(Strict):
    model: str
    prompt: Optional[str] = None
    messages: Optional[list[Message]] = None


class LensRequest(Strict):
    model: str
    prompt: str = Field(min_length=1)
    top: int = Field(5, ge=1, le=20)  # tokens shown per depth and position


class DetokenizeRequest(Strict):
    model: str
    tokens: TokenIds
