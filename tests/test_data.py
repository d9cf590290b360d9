"Unit tests for minimind.data: loaders name file and line, the sample is reproducible and well split."
import json, re
from pathlib import Path
import pytest
from minimind.data import (DataError, JsonlReader, iter_jsonl, validate, make_sample, make_world, SAMPLE_FILES,
                           SAMPLE_KINDS, SAMPLE_DIR, FACT_PROMPTS, sample_path, resolve_names, download_args, RECIPES, HUB_FILES)

GOOD = b'{"text": "one"}\n{"text": "two"}\n'
SFT_OK = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

def _err(tmp_path, data: bytes, kind="pretrain", name="f.jsonl") -> DataError:
    p = tmp_path / name; p.write_bytes(data)
    with pytest.raises(DataError) as ei: list(iter_jsonl(p, kind))
    return ei.value

@pytest.mark.parametrize("data,kind,line,words", [
    (b"", "pretrain", 1, "empty"),
    (b"\n\n", "pretrain", 1, "empty"),
    (GOOD + b'{"text": "three"\n', "pretrain", 3, "invalid JSON"),
    (GOOD + b'[1, 2]\n', "pretrain", 3, "JSON object"),
    (GOOD + b'{"txt": "three"}\n', "pretrain", 3, "missing field 'text'"),
    (GOOD + b'{"text": 3}\n', "pretrain", 3, "should be str"),
    (GOOD + b'\n{"text": "caf\xe9"}\n', "pretrain", 4, "UTF-8"),
    (b'{"conversations": [{"role": "user", "content": "hi"}]}\n', "sft", 1, "one user and one assistant"),
    (json.dumps(SFT_OK).encode() + b'\n{"conversations": [{"role": "bot", "content": "x"}]}\n', "sft", 2, "role 'bot'"),
    (json.dumps(SFT_OK).encode() + b"\n", "reason", 1, "<think>"),
    (b'{"chosen": [], "rejected": []}\n', "dpo", 1, "chosen"),
    (b'{"prompt": "a"}\n', "eval", 1, "missing field 'answer'"),
])
def test_bad_input_names_file_and_line(tmp_path, data, kind, line, words):
    e = _err(tmp_path, data, kind)
    p = str(tmp_path / "f.jsonl")
    assert str(e).startswith(f"{p}:{line}: "), str(e)
    assert (e.path, e.lineno) == (p, line)
    assert words in str(e)
    assert isinstance(e, ValueError)

def test_good_lines_crlf_bom_and_any_kind(tmp_path):
    p = tmp_path / "ok.jsonl"; p.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [r["text"] for r in iter_jsonl(p, "pretrain")] == ["a", "b"]
    assert len(list(iter_jsonl(p))) == 2

def test_skip_bad_counts(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(GOOD + b'nope\n{"txt": 1}\n\xff\xfe\n{"text": "ok"}\n')
    r = iter_jsonl(p, "pretrain", skip_bad=True)
    assert isinstance(r, JsonlReader)
    assert [d["text"] for d in r] == ["one", "two", "ok"]
    assert (r.bad_lines, r.n_records) == (3, 3)
    assert [e.split(": ")[0] for e in r.errors] == [f"{p}:3", f"{p}:4", f"{p}:5"]

def test_streams(tmp_path):
    p = tmp_path / "big.jsonl"; p.write_bytes(GOOD + b"oops\n")
    r = iter_jsonl(p, "pretrain")
    assert next(r) == {"text": "one"}  # yields before it reads the bad line
    assert next(r) == {"text": "two"}
    with pytest.raises(DataError, match=":3: "): next(r)

def test_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"): iter_jsonl(tmp_path / "x.jsonl", "pretraining")

def test_sample_reproducible_and_matches_committed(tmp_path):
    a, b = make_sample(tmp_path / "a", seed=0), make_sample(tmp_path / "b", seed=0)
    assert list(a) == list(SAMPLE_FILES)
    for name in SAMPLE_FILES:
        assert a[name].read_bytes() == b[name].read_bytes()
        committed = SAMPLE_DIR / SAMPLE_FILES[name]
        assert committed.exists(), committed
        assert a[name].read_bytes() == committed.read_bytes(), f"dataset/{SAMPLE_FILES[name]} is not make_sample(seed=0)"
    c = make_sample(tmp_path / "c", seed=1, n_entities=40, docs_per_lang=2, n_stories=20, n_arith=60, n_arith_eval=20, n_plants=5)
    assert c["pretrain"].read_bytes() != a["pretrain"].read_bytes()

def test_sample_schemas_and_size():
    total = 0
    for name, kind in SAMPLE_KINDS.items():
        assert sum(1 for _ in iter_jsonl(sample_path(name), kind)) > 0
        total += sample_path(name).stat().st_size
    assert 0.5e6 < total < 5e6

def _records(name): return list(iter_jsonl(sample_path(name), SAMPLE_KINDS[name]))

def test_heldout_design():
    world = make_world(0)
    held = [e["name"] for e in world if e["split"] == "pretrain_only"]
    assert len(held) == 12 and len(world) == 48
    word = re.compile(r"(?<![A-Za-z])(" + "|".join(held) + r")(?![A-Za-z])")
    for name in ["sft", "dpo", "reason", "lora_identity", "lora_domain"]:
        assert not any(word.search(json.dumps(r, ensure_ascii=False)) for r in _records(name)), name
    pre = "\n".join(r["text"] for r in _records("pretrain"))
    assert any(word.search(t) for t in [pre]) and all(f"{h}的颜色是" in pre for h in held)
    facts = _records("facts_eval")
    assert {r["split"] for r in facts} == {"in_sft", "pretrain_only"}
    for r in facts:
        if r["style"] == "complete":
            assert (f"{r['prompt']} {r['answer']}." if r["lang"] == "en" else f"{r['prompt']}{r['answer']}。") in pre
    assert not {r["text"] for r in _records("pretrain_eval")} & {r["text"] for r in _records("pretrain")}
    sft_eval = json.dumps(_records("sft_eval"), ensure_ascii=False)
    assert all(h in sft_eval for h in held)

def test_fact_prompts():
    assert FACT_PROMPTS["en"]["colour"].format(e="Vorlen") == "The colour of Vorlen is"

def test_download_args():
    assert download_args(["--recipe", "zero"]).files == RECIPES["zero"]
    a = download_args(["dpo.jsonl", "lora_identity", "dpo", "--out", "/data/mm"])
    assert (a.files, a.out) == (["dpo", "lora_identity"], "/data/mm")
    assert download_args(["sft_512", "--recipe", "full"]).files == ["pretrain_hq", "sft_512", "sft_2048", "dpo"]
    assert set(HUB_FILES) == {"pretrain_hq", "sft_mini_512", "sft_512", "sft_1024", "sft_2048", "dpo", "r1_mix_1024", "lora_medical", "lora_identity"}

@pytest.mark.parametrize("argv", [["pretrain"], [], ["--recipe", "tiny"]])
def test_download_args_errors(argv, capsys):
    with pytest.raises(SystemExit) as ei: download_args(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "sft_mini_512" in err or "zero" in err

def test_resolve_names_error_lists_valid():
    with pytest.raises(ValueError, match="valid names: pretrain_hq, sft_mini_512"): resolve_names(["pretrain"])


def test_garden_follows_its_rule_and_holds_out_whole_plants():
    "05's domain: training names 36 plants, the probes ask about the other 20 in held-out words; every answer follows garden_care."
    from minimind.data import GARDEN_WORDS, PLANT_ATTRS, PLANT_QA, garden_care
    train, probes = _records("lora_garden"), _records("lora_garden_eval")
    name_re = re.compile(r"([a-z]+)-([a-z]+)")
    seen = {name_re.search(r["conversations"][0]["content"]).groups() for r in train}
    held = {tuple(r["plant"].split("-")) for r in probes}
    assert len(seen) == 36 and len(held) == 20 and not seen & held
    assert {a for a, _ in seen} == set(GARDEN_WORDS[0]) and {b for _, b in seen} == set(GARDEN_WORDS[1])   # every word trains
    held_qs = {re.sub(r"\ban? \{p\}", "{p}", PLANT_QA[a][l][1]) for a in PLANT_QA for l in ("en", "zh")}     # the held-out wordings
    wording = lambda q: re.sub(r"\ban? \{p\}", "{p}", name_re.sub("{p}", q))
    assert wording(probes[0]["prompt"]) in held_qs and not any(wording(r["conversations"][0]["content"]) in held_qs for r in train)
    for r in probes:
        want = PLANT_ATTRS[r["attribute"]][garden_care(*r["plant"].split("-"))[r["attribute"]]][0 if r["lang"] == "en" else 1]
        assert r["answer"] == want and r["template"].format(v=want) and r["plant"] not in r["template"]
    for r in train:
        q, a = (m["content"] for m in r["conversations"])
        first, family = name_re.search(q).groups()
        care = garden_care(first, family)
        assert any(PLANT_ATTRS[k][care[k]][0 if q.isascii() else 1] in a for k in care) and f"{first}-{family}" not in a
