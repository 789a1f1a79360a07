"""A tiny, randomly initialised causal LM with a locally trained tokenizer, for fast model-layer tests.

Nothing is downloaded: the BPE tokenizer is trained with ``tokenizers`` on the texts given (or a small
built-in radiology vocabulary) and the model is a 2-layer LLaMA with a few thousand parameters per layer,
initialised from a seed. It speaks the same ChatML template as SmolLM2, so every code path that runs the
real model (chat templating, greedy decoding, streaming, LoRA) runs on it in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sage_health.models.generation.transformers_backend import CHATML_TEMPLATE

_DEFAULT_TEXTS = (
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality. Degenerative changes of the thoracic spine.",
    "Patchy right lower lobe consolidation concerning for pneumonia.",
    "Findings: stable mediastinal contours. Impression: no acute disease.",
    "Question: is the answer yes, no or maybe? Answer: yes.",
)


def build_tiny_causal_lm(out_dir: Path, *, texts: Sequence[str] = (), seed: int = 0, vocab_size: int = 384) -> Path:
    """Write a tiny LLaMA causal LM + tokenizer to ``out_dir`` (loadable with ``from_pretrained``)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(texts or _DEFAULT_TEXTS)
    bpe.train_from_iterator(corpus * 4 + ["system", "user", "assistant"], trainer=trainer)
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        eos_token="<|im_end|>",  # noqa: S106 - a token name, not a secret
        bos_token="<|im_start|>",  # noqa: S106
        unk_token="<|endoftext|>",  # noqa: S106
    )
    tok.pad_token = tok.eos_token
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    # Random weights: keep the control tokens out of the output so every generation has visible text.
    model.generation_config.suppress_tokens = [tok.unk_token_id, tok.bos_token_id]
    model.generation_config.begin_suppress_tokens = [tok.eos_token_id]
    model.save_pretrained(out_dir)
    return out_dir
