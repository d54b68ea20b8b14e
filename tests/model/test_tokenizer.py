"""Prompt tokenizer: the tiny on-disk tokenizer, padding/truncation to text_len, cleaning, errors."""

from __future__ import annotations

import pytest

from inference.models.tokenizer import PromptTokenizer, clean_prompt, write_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=256)


def test_tiny_tokenizer_loads_offline_with_exact_vocab(tiny_dir):
    """AutoTokenizer loads the written folder offline and it has exactly vocab_size tokens with umT5's specials."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir), local_files_only=True)
    assert len(tok) == 256
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)


def test_round_trip_recovers_cleaned_text(tiny_dir):
    """Tokenizing then decoding an ASCII prompt gives back the cleaned prompt."""
    tok = PromptTokenizer(tiny_dir, text_len=64)
    prompt = "A cozy  room,\twith 3 lamps &amp; Books!"
    ids, _ = tok([prompt])
    assert tok.decode(ids[0]) == "A cozy room, with 3 lamps & Books!"


def test_short_prompt_is_padded_and_ends_with_eos(tiny_dir):
    """A short prompt ends with </s> (id 1), then pad id 0 with mask 0 up to text_len."""
    tok = PromptTokenizer(tiny_dir, text_len=16)
    ids, mask = tok(["a sunny village", "the camera walks forward through a dark forest"])
    assert ids.shape == mask.shape == (2, 16)
    n = int(mask[0].sum())
    assert ids[0, n - 1] == 1 and ids[0, n:].eq(0).all() and mask[0, n:].eq(0).all() and mask[0, :n].eq(1).all()
    assert int(mask[1].sum()) > n


def test_long_prompt_is_truncated_keeping_eos(tiny_dir):
    """A prompt longer than text_len is cut to text_len tokens, the last one </s>."""
    tok = PromptTokenizer(tiny_dir, text_len=8)
    ids, mask = tok(["walking along the beach at sunset with waves rolling in and clouds"])
    assert ids.shape == (1, 8) and mask.all() and ids[0, -1] == 1


def test_clean_prompt_unescapes_and_collapses_whitespace():
    """Cleaning unescapes doubly escaped HTML and collapses runs of whitespace."""
    assert clean_prompt("  a &amp;amp; b \n\n c  ") == "a & b c"


def test_missing_tokenizer_folder_names_it_and_the_download(tmp_path):
    """A missing tokenizer folder raises FileNotFoundError naming it and the download command."""
    folder = tmp_path / "google" / "umt5-xxl"
    with pytest.raises(FileNotFoundError) as info:
        PromptTokenizer(folder, text_len=8)
    assert str(folder) in str(info.value)
    assert f"--local-dir {tmp_path}" in str(info.value)


def test_too_small_vocab_is_refused(tmp_path):
    """A tiny tokenizer smaller than its printable-ASCII base vocabulary is refused, naming the size."""
    with pytest.raises(ValueError, match="vocab_size=50"):
        write_tiny_tokenizer(tmp_path, vocab_size=50)
