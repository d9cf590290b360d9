"""minimind.tools: the Qwen3 / minimind-3 tool format rendered and parsed, a calculator that runs no code and bounds
sizes before computing, a lookup over the sample's world, calls checked against their signatures, and the agent loop
driven by a scripted model."""
import json

import pytest

from minimind.data import ATTRIBUTES, fact_value, make_world
from minimind.tokenizer import apply_chat_template, load_tokenizer
from minimind.tools import (CALCULATOR, LOOKUP, ToolError, agent_loop, calculate, default_tools, make_lookup, parse_tool_calls,
                            practice_entities, render_messages, run_call, tool_chats, tools_block)

WORLD = make_world(0)


def test_render_is_chatml_without_tools_and_qwen3_with_them():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert render_messages(msgs) == apply_chat_template(msgs) and render_messages(msgs, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    text = render_messages([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "ok",
                             "tool_calls": [{"function": {"name": "calculator", "arguments": {"expression": "1 + 2"}}},
                                            {"function": {"name": "lookup", "arguments": '{"entity": "Finkim", "attribute": "colour"}'}}]},
                            {"role": "tool", "content": "3"}, {"role": "tool", "content": "紫色"}], tools=[CALCULATOR, LOOKUP])
    assert text.startswith("<|im_start|>system\n# Tools\n") and tools_block([CALCULATOR]).count("\n{\"type\": \"function\"") == 1
    assert ('<|im_start|>assistant\nok\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "lookup", "arguments": {"entity": "Finkim", "attribute": "colour"}}\n</tool_call><|im_end|>\n') in text
    assert text.endswith("<|im_start|>user\n<tool_response>\n3\n</tool_response>\n<tool_response>\n紫色\n</tool_response><|im_end|>\n")
    assert tools_block([LOOKUP], "sys").startswith("sys\n\n# Tools")


@pytest.mark.parametrize("text,n_calls,error", [
    ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "2"}}\n</tool_call>', 1, None),
    ('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2\\"}"}</tool_call>', 1, None),   # arguments as a JSON string
    ('<tool_call>\n{"name": "calculator", "arguments": {\n</tool_call>', 0, "not valid JSON"),
    ('<tool_call>\n["calculator"]\n</tool_call>', 0, '"name" string'),
    ('<tool_call>\n{"name": "calculator", "arguments": 3}\n</tool_call>', 0, "must be an object"),
    ('hi <tool_call>\n{"name": "calculator"', 0, "unclosed"),
    ("no call at all", 0, None)])
def test_parse_tool_calls(text, n_calls, error):
    content, calls, errors = parse_tool_calls(text)
    assert len(calls) == n_calls and (error in errors[0] if error else not errors)
    assert ("<tool_call>" in content) == bool(errors) and all(isinstance(c["arguments"], dict) for c in calls)   # a broken block stays in the text


def test_calculator_computes_and_refuses_without_running_code():
    assert [calculate(e) for e in ("47 + 85", "(2 + 6) × 12", "7 / 2", "-3 ** 2", "2 ** 0.5", "17 // 5 % 3")] == ["132", "96", "3.5", "-9", "1.41421356237", "0"]
    for e, why in [("__import__('os').system('echo hi')", "only numbers"), ("().__class__", "only numbers"), ("a", "only numbers"),
                   ("9 ** 9 ** 9", "too large"), ("2 ** 4000", "too large"), ("(10 ** 600) * (10 ** 600)", "too large"),
                   ("1 / 0", "division by zero"), ("1e308 * 10 ** 5", "too large"), ("", "empty"), ("1 +" * 100, "longer than"), ("2 +", "not an arithmetic")]:
        with pytest.raises(ToolError, match=why): calculate(e)


def test_lookup_knows_every_fact_of_the_world():
    lookup = make_lookup(WORLD)
    assert all(lookup(e["name"], a, l) == fact_value(e, a, l) for e in WORLD for a in ATTRIBUTES for l in ("en", "zh"))
    with pytest.raises(ToolError, match="no entity"): lookup("Nobody", "colour")
    with pytest.raises(ToolError, match="unknown attribute"): lookup(WORLD[0]["name"], "height")


def test_run_call_answers_every_mistake_with_an_error():
    tools = default_tools(WORLD)
    assert run_call({"name": "calculator", "arguments": {"expression": "6 * 7"}}, tools) == "42"
    for call, why in [({"name": "nope", "arguments": {}}, "unknown tool"), ({"name": "lookup", "arguments": {"entity": "x"}}, "missing argument"),
                      ({"name": "calculator", "arguments": {"expression": "1", "x": 1}}, "unknown argument"),
                      ({"name": "calculator", "arguments": {"expression": 5}}, "must be a string"),
                      ({"name": "lookup", "arguments": {"entity": WORLD[0]["name"], "attribute": "size"}}, "must be one of"),
                      ({"name": "calculator", "arguments": {"expression": "open('f')"}}, "only numbers")]:
        assert why in json.loads(run_call(call, tools))["error"]


def test_agent_loop_runs_calls_returns_errors_and_stops():
    tools, prompts = default_tools(WORLD), []
    turns = iter(['<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 +"}}\n</tool_call>',
                  '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 2"}}\n</tool_call>', "It is 4."])
    def model(prompt): prompts.append(prompt); return next(turns)
    msgs, ended = agent_loop(model, [{"role": "user", "content": "2 + 2?"}], tools)
    assert ended == "answer" and [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert "not an arithmetic expression" in msgs[2]["content"] and msgs[4]["content"] == "4" and msgs[4]["tool_call_id"] == msgs[3]["tool_calls"][0]["id"]
    assert json.loads(msgs[3]["tool_calls"][0]["function"]["arguments"]) == {"expression": "2 + 2"}
    assert "# Tools" in prompts[0] and prompts[2].endswith("<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    looping = lambda prompt: '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1"}}\n</tool_call>'
    msgs, ended = agent_loop(looping, [{"role": "user", "content": "?"}], tools, max_steps=3)
    assert ended == "step limit" and sum(m["role"] == "assistant" for m in msgs) == 3
    seen = []                                                # renders: generate gets the messages and signatures; no tools: the reply is the answer
    msgs, ended = agent_loop(lambda m, s: seen.append((m, s)) or "hi <tool_call>", [{"role": "user", "content": "?"}], {}, renders=True)
    assert ended == "answer" and msgs[-1] == {"role": "assistant", "content": "hi <tool_call>"} and seen == [([{"role": "user", "content": "?"}], [])]


def test_tool_sft_trains_the_assistant_turns_only():
    "Without tools: notebook 04's encode_sft exactly. With tools: the trained tokens are the assistant's calls and answer, never a tool response."
    from minimind.sft import encode_sft
    from minimind.tokenizer import load_tokenizer
    from minimind.tools import encode_tool_sft
    tok = load_tokenizer()
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert encode_tool_sft(tok, plain) == encode_sft(tok, plain)
    convo = [{"role": "user", "content": "What is 6 × 7?"},
             {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}]},
             {"role": "tool", "content": "SECRET-RESULT-42"}, {"role": "assistant", "content": "6 × 7 = 42."}]
    ids, flags, cut = encode_tool_sft(tok, convo, [CALCULATOR])
    runs, run = [], []
    for i, f in zip(ids + [0], flags + [False]):
        if f: run.append(i)
        elif run: runs.append(tok.decode(run, skip_special_tokens=False)); run = []
    assert runs == ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call><|im_end|>', "6 × 7 = 42.<|im_end|>"]
    assert not cut and encode_tool_sft(tok, convo, [CALCULATOR], max_len=10)[2] and len(encode_tool_sft(tok, convo, [CALCULATOR], max_len=10)[0]) == 10


def test_tool_chats_are_deterministic_checked_and_split():
    from minimind.reason import heldout_expressions
    from minimind.tools import tool_chats
    train, held = tool_chats(90), tool_chats(30, "heldout")
    assert train == tool_chats(90) and [r["kind"] for r in train[:3]] == ["calculator", "lookup", "none"] and {r["lang"] for r in train} == {"en", "zh"}
    q = lambda rs: {(r["kind"], r["messages"][0]["content"]) for r in rs}
    assert not q(train) & q(held)
    exprs = lambda rs: {json.loads(r["messages"][1]["tool_calls"][0]["function"]["arguments"])["expression"] for r in rs if r["kind"] == "calculator"}
    assert exprs(held) <= set(heldout_expressions("columns", 200)) and not exprs(train) & set(heldout_expressions("columns", 200))
    ents = lambda rs: {json.loads(r["messages"][1]["tool_calls"][0]["function"]["arguments"])["entity"] for r in rs if r["kind"] == "lookup"}
    split = {e["name"]: e["split"] for e in WORLD}
    practice = practice_entities(8, WORLD)
    assert {split[e] for e in ents(held)} == {"pretrain_only"}                        # held out: names no tool conversation trains on
    assert {split.get(e, "practice") for e in ents(train)} == {"in_sft", "practice"} and not {e["name"].lower() for e in practice} & set(map(str.lower, split))
    tools = default_tools(WORLD + practice)
    for r in train + held:
        if r["kind"] == "none": assert len(r["messages"]) == 2; continue
        f = r["messages"][1]["tool_calls"][0]["function"]
        assert r["messages"][2]["content"] == run_call({"name": f["name"], "arguments": json.loads(f["arguments"])}, tools) == str(r["answer"])
        assert r["messages"][3]["content"] in (f"{r['answer']}.", f"{r['answer']}。")      # the answer is the tool's result


def test_transformers_renders_tools_as_we_do():
    "The tokenizer's Jinja template (00) and `render_messages` agree on every tool conversation, with and without a system prompt or tools."
    AutoTokenizer = pytest.importorskip("transformers").AutoTokenizer
    from minimind.tokenizer import DEFAULT_TOKENIZER_DIR
    hf = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER_DIR)
    for split in ("train", "heldout"):
        for r in tool_chats(30, split):
            for msgs in (r["messages"], [{"role": "system", "content": "Be brief."}] + r["messages"]):
                for tools, gen in (([CALCULATOR, LOOKUP], False), ([CALCULATOR, LOOKUP], True), (None, True)):
                    assert hf.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen) == render_messages(msgs, tools, gen)
    ask = [{"role": "user", "content": "What is 47 + 85?"}]
    want = apply_chat_template(ask, add_generation_prompt=True) + "<think>\n"
    for flag in ("open_thinking", "enable_thinking"):      # minimind-3's name for the thinking switch, and Qwen3's
        assert hf.apply_chat_template(ask, tokenize=False, add_generation_prompt=True, **{flag: True}) == want == render_messages(ask, None, True, True)
    assert not hf.apply_chat_template(ask, tokenize=False, add_generation_prompt=True, enable_thinking=False).endswith("<think>\n")


def test_tool_sft_trains_the_calls_and_saves_a_tool_model(tmp_path, shared_models):
    "`minimind train tools`: a short run from the tiny chat model lowers the held-out loss of the calls, records the four keyed rows, and writes tools.json, which `minimind chat --tools` reads."
    from minimind.cli import main
    from minimind.tools import TOOL_PRESETS, announces_tools, encode_tool_sft, tool_sft_data
    assert main(["train", "tools", "--preset", "tiny", "--steps", "20", "--init-from", str(shared_models["sft"]), "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "outcome.json").read_text())["rows"]
    assert [r.get("key") for r in rows[:4]] == ["tools.exact", "tools.valid", "tools.lookup", "tools.restraint"]
    assert rows[4]["after"] < rows[4]["before"] - 1.0                                     # the held-out loss on the assistant's turns falls
    assert announces_tools(tmp_path / "model") is False and announces_tools(tmp_path) is True   # no tools.json: a plain model announces them
    tok = load_tokenizer()
    chats = tool_chats(9)
    data = tool_sft_data(chats, tok, None, TOOL_PRESETS["tiny"]["seq_len"] + 1)
    assert len(data) == 9
    for i, c in enumerate(chats):                                                         # conversation i, with encode_tool_sft's loss mask
        ids, flags, _ = encode_tool_sft(tok, c["messages"])
        assert data.example(i)[0].tolist() == ids and data.example(i)[1].tolist() == flags and not flags[0]
    with pytest.raises(ValueError, match="longer than"): tool_sft_data(tool_chats(3), tok, [CALCULATOR, LOOKUP], 160)   # the # Tools block does not fit
