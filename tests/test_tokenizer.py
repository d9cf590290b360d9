"Unit tests for minimind.tokenizer: special ids, Qwen2 pre-tokenizer, determinism, round trip, ChatML agreement with transformers."
import json, random
import pytest
from minimind.data import DataError
from minimind.tokenizer import (PAD_ID, BOS_ID, EOS_ID, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, THINK_TOKENS, SPECIAL_TOKENS, QWEN2_PATTERN,
                                DEFAULT_TOKENIZER_DIR, train_tokenizer, save_tokenizer, load_tokenizer, apply_chat_template,
                                encode_chat, tokenizer_config, common_cjk_chars)

# Qwen2's split regex as its tokenizer.json has it (and as llama.cpp's "qwen2" pre-tokenizer implements it)
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
MSGS = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am MiniMind."}, {"role": "user", "content": "Vorlen的颜色是什么？ 12+7"}]

@pytest.fixture(scope="module")
def tok(): return load_tokenizer()

def test_special_ids(tok):
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert tok.get_vocab_size() == 6400
    ids = tok.encode("<think>a</think><answer>b</answer>").ids
    assert [i for i in ids if i < 7] == [3, 4, 5, 6]

def test_pre_tokenizer_is_qwen2():
    d = json.loads((DEFAULT_TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert QWEN2_PATTERN == QWEN2
    split, byte = d["pre_tokenizer"]["pretokenizers"]
    assert split["type"] == "Split" and split["pattern"] == {"Regex": QWEN2} and split["behavior"] == "Isolated"
    assert byte["type"] == "ByteLevel" and byte["add_prefix_space"] is False and byte["use_regex"] is False
    assert d["decoder"]["type"] == "ByteLevel" and d["normalizer"] is None

def test_shipped_tokenizer_is_reproducible(tmp_path):
    save_tokenizer(train_tokenizer(), tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / f).read_bytes() == (DEFAULT_TOKENIZER_DIR / f).read_bytes(), f

ROUND_TRIP = ["𠀀𠀁 龘 齉", "👩‍👩‍👧‍👦 family 🏳️‍🌈 👍🏽", "مرحبا بالعالم", "Hello 世界 Привет κόσμε 🌍 नमस्ते",
              "tabs\tand\r\nnewlines \u00a0 \x00", "  leading and trailing  ", "<think>x</think><answer>y</answer>", ""]

@pytest.mark.parametrize("s", ROUND_TRIP + [bytes(random.Random(i).randrange(256) for _ in range(80)).decode("utf-8", "replace") for i in range(10)])
def test_round_trip(tok, s):
    assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s

def test_common_cjk_are_single_tokens(tok):
    chars = common_cjk_chars()
    assert len(chars) == 3755 and chars[0] == "啊"
    assert sum(len(tok.encode(c).ids) == 1 for c in chars) > 1500

def test_chat_template_text_and_ids(tok):
    assert apply_chat_template(MSGS[1:3]) == "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am MiniMind.<|im_end|>\n"
    assert apply_chat_template(MSGS[1:2], add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = encode_chat(tok, MSGS, add_generation_prompt=True)
    assert ids.count(BOS_ID) == 5 and ids.count(EOS_ID) == 4 and ids[0] == BOS_ID
    assert tok.decode(ids, skip_special_tokens=False) == apply_chat_template(MSGS, True)

def test_autotokenizer_agrees(tmp_path, tok):
    from transformers import AutoTokenizer
    save_tokenizer(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for msgs in (MSGS, MSGS[:3], MSGS[1:2]):
        for gen in (False, True):
            out = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
            hf_ids = list(out["input_ids"] if hasattr(out, "keys") else out)
            assert hf_ids == encode_chat(tok, msgs, gen)
            assert hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == apply_chat_template(msgs, gen)
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert hf("Vorlen的颜色是蓝色。")["input_ids"] == tok.encode("Vorlen的颜色是蓝色。").ids
    assert hf.decode(hf("<think>hi</think>")["input_ids"], skip_special_tokens=True) == "<think>hi</think>"

def test_config():
    c = tokenizer_config()
    assert c["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (c["bos_token"], c["eos_token"], c["pad_token"], c["unk_token"]) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, PAD_TOKEN)
    assert [c["added_tokens_decoder"][str(i)]["content"] for i in range(7)] == SPECIAL_TOKENS
    assert [c["added_tokens_decoder"][str(i)]["special"] for i in range(7)] == [True] * 3 + [False] * 4

def test_small_training_deterministic(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"hello world {i} 你好世界"}, ensure_ascii=False) for i in range(50)), encoding="utf-8")
    a, b = train_tokenizer([p], 400, cjk_chars=False), train_tokenizer([p], 400, cjk_chars=False)
    assert a.to_str() == b.to_str()
    assert [a.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))

@pytest.mark.parametrize("data,line", [
    (b"", 1),
    (b'{"text": "a"}\n{"text": \n', 2),
    (b'{"text": "a"}\n{"txt": "b"}\n', 2),
    (b'{"text": "a"}\n\n{"text": "caf\xe9"}\n', 3),
    (b'{"foo": 1}\n', 1),
])
def test_train_bad_input_names_file_and_line(tmp_path, data, line):
    p = tmp_path / "bad.jsonl"; p.write_bytes(data)
    with pytest.raises(DataError) as ei: train_tokenizer([p], 300)
    assert str(ei.value).startswith(f"{p}:{line}: ")

def test_train_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="no training files"): train_tokenizer([], 300)
    p = tmp_path / "e.jsonl"; p.write_text('{"prompt": "", "answer": " "}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus"): train_tokenizer([p], 300)

def test_load_tokenizer_paths(tmp_path, tok):
    save_tokenizer(tok, tmp_path)
    assert load_tokenizer(tmp_path).to_str() == tok.to_str() == load_tokenizer(tmp_path / "tokenizer.json").to_str()
    with pytest.raises(FileNotFoundError): load_tokenizer(tmp_path / "nope")
