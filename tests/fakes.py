"""A fake vLLM engine and tokenizer for unit tests of the generation core and the service.

The fake mirrors the parts of AsyncLLM the project uses: `generate` yielding DELTA outputs
(children of an n>1 request by index, each finishing once), `logprob_token_ids` in pass 1,
`abort`, LoRA add/remove, and a count of unfinished requests. Its "model" answers with the
class that the prompt steers towards (a forced digit or a class-conditioned instruction),
or a seeded random class, so tests can predict what comes back.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distctl.attributes import ATTRIBUTES


class FakeTokenizer:
    """One token per character; the chat template is a plain marker around the user turn."""

    name_or_path = "fake-char-tokenizer"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(ch) for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> str:
        user = conversation[-1]["content"]
        return f"<user>{user}</user><assistant>"


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    index: int
    text: str
    finish_reason: str | None
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class Output:
    request_id: str
    outputs: list[Completion]
    finished: bool


Responder = Callable[[str, Any, random.Random], str]


def steered_answer(prompt: str, lora: Any, rng: random.Random) -> str:
    """Answer with the class a prompt steers towards; otherwise a random gender."""
    tail = prompt.rsplit("<assistant>", 1)[-1]
    body = prompt.lower()
    for attribute in ATTRIBUTES.values():
        for i, cls in enumerate(attribute.classes):
            if tail == str(i) and attribute.name in body:
                return f" {cls.title()}"
            if f"the person is {cls}." in body or f"person feels {cls}" in body:
                return cls.title()
    return rng.choice(["Male", "Female"])


@dataclass
class FakeEngine:
    respond: Responder = steered_answer
    digit_logprobs: dict[int, float] = field(default_factory=dict)
    step_delay: float = 0.0
    chunks: int = 2
    requests: list[tuple[str, Any, Any]] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)
    loras: dict[int, Any] = field(default_factory=dict)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def get_num_unfinished_requests(self) -> int:
        return len(self.running)

    async def add_lora(self, lora_request: Any) -> bool:
        self.loras[lora_request.lora_int_id] = lora_request
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        return self.loras.pop(lora_id, None) is not None

    async def abort(self, request_id: str | Sequence[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            if rid in self.running:
                self.running.discard(rid)
                self.aborted.append(rid)

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Output]:
        self.requests.append((request_id, sampling_params, lora_request))
        self.running.add(request_id)
        text = self.tokenizer.decode(prompt["prompt_token_ids"])
        try:
            if sampling_params.logprob_token_ids:
                ids = sampling_params.logprob_token_ids
                # vLLM refuses a request whose logprobs count differs from the ids it names
                if sampling_params.logprobs not in (None, len(ids)):
                    raise ValueError("logprobs must equal len(logprob_token_ids)")
                table = {t: Logprob(self.digit_logprobs.get(t, -math.log(len(ids)))) for t in ids}
                await asyncio.sleep(self.step_delay)
                yield Output(request_id, [Completion(0, "0", "length", [table])], True)
                return
            answers = [
                self.respond(text, lora_request, random.Random(sampling_params.seed + j))
                for j in range(sampling_params.n)
            ]
            for step in range(self.chunks):
                await asyncio.sleep(self.step_delay)
                if request_id not in self.running:
                    return
                last = step == self.chunks - 1
                pieces = []
                for j, answer in enumerate(answers):
                    cut = len(answer) * step // self.chunks, len(answer) * (step + 1) // self.chunks
                    pieces.append(Completion(j, answer[cut[0] : cut[1]], "stop" if last else None))
                yield Output(request_id, pieces, last)
        except (asyncio.CancelledError, GeneratorExit):
            # as AsyncLLM.generate does: a consumer that goes away aborts its request
            await self.abort(request_id)
            raise
        finally:
            self.running.discard(request_id)
