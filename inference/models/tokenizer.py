"""Prompt -> fixed-length umT5 token ids, from a local tokenizer folder (never the hub); plus a tiny test tokenizer."""

from __future__ import annotations

import html
import re
import string
from collections import Counter
from pathlib import Path

import torch

from inference.models.weights import download_command

# Special tokens of umT5 and their ids (pad 0, end of sentence 1, unknown 2).
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# SentencePiece's word-start marker.
WORD_START = "\u2581"


def clean_prompt(text: str) -> str:
    """The reference's "whitespace" cleaning: unescape HTML twice, collapse whitespace, strip.

    (The reference also runs ftfy.fix_text first; ftfy is not a dependency
    here, so mojibake/curly-quote repair is not applied.)
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer:
    """Prompts -> (ids, mask), each (B, text_len) int64: padded with id 0 / mask 0, truncated, </s> kept."""

    def __init__(self, path: str | Path, *, text_len: int, model_dir: str | Path | None = None):
        path = Path(path)
        if not path.is_dir():
            hint = download_command(model_dir if model_dir is not None else path.parent.parent)
            raise FileNotFoundError(f"tokenizer folder {path} not found: the checkpoint download is "
                                    f"incomplete. Download it again with: {hint}")
        from transformers import AutoTokenizer  # heavy import, only when a tokenizer is built

        self.path = path
        self.text_len = text_len
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            raise TypeError(f"PromptTokenizer takes a list of prompts, got the string {prompts[:40]!r}")
        batch = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                               max_length=self.text_len, add_special_tokens=True, return_tensors="pt")
        return batch["input_ids"].long(), batch["attention_mask"].long()

    def decode(self, ids: torch.Tensor) -> str:
        """Text of one row of ids, special tokens dropped."""
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)


# A few prompts in the style users send; their words fill the tiny tokenizer's vocabulary.
_TINY_CORPUS = (
    "a sunny medieval village street with stone houses and a fountain",
    "the camera walks forward through a dark forest at night",
    "a futuristic city with neon lights, flying cars and rain",
    "an old castle on a green hill under a blue sky with clouds",
    "walking along the beach at sunset, waves rolling in",
    "a cozy room with a wooden table, a lamp and books on the shelf",
)


def _tiny_pieces(vocab_size: int) -> list[tuple[str, float]]:
    """Deterministic Unigram vocabulary of exactly vocab_size pieces covering printable ASCII."""
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0), (WORD_START, -8.0)]
    pieces += [(c, -10.0) for c in chars]
    if vocab_size < len(pieces):
        raise ValueError(f"vocab_size={vocab_size} is too small: a tiny tokenizer needs at least "
                         f"{len(pieces)} pieces (specials, word start, printable ASCII)")
    words = Counter(w for line in _TINY_CORPUS for w in re.findall(r"[a-z]+", line))
    # longer pieces score higher per character, so whole words beat spelling them out
    extra = [(WORD_START + w, -5.0) for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    extra += [(WORD_START + c, -9.0) for c in string.ascii_lowercase]
    extra += [(a + b, -9.5) for a in string.ascii_lowercase for b in string.ascii_lowercase]
    seen = {p for p, _ in pieces}
    for piece, score in extra:
        if len(pieces) == vocab_size:
            break
        if piece not in seen:
            pieces.append((piece, score))
            seen.add(piece)
    if len(pieces) < vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is larger than the tiny tokenizer can fill ({len(pieces)})")
    return pieces


def write_tiny_tokenizer(directory: str | Path, vocab_size: int = 256) -> Path:
    """Write a real, tiny umT5-style tokenizer that `AutoTokenizer.from_pretrained(directory)` loads offline.

    SentencePiece-like Unigram model (word-start marker, </s> appended) with
    exactly `vocab_size` pieces: <pad>=0, </s>=1, <unk>=2, printable ASCII
    characters, words of a small prompt corpus and letter pairs. Used by tests
    and by tools that build tiny checkpoints. Returns the directory.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.Unigram(_tiny_pieces(vocab_size), unk_id=2, byte_fallback=False))
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    core.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                      model_max_length=512)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(directory))
    return directory
