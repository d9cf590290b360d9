"""Tool calling through minimind.serve, with the official `openai` client: `tools` and `tool_choice` checked (bad ones
400 naming the field), the reply's calls returned as `tool_calls` (and streamed as OpenAI streams them, reassembled by
the client's stream helper), `tool` results rendered into the prompt, `tool_choice` none and named. A tiny model does
not call tools by itself, so the protocol runs on `ScriptedModel` (the server's whole path, with replies we write);
the real tiny model, forced by a named `tool_choice`, must get a well-formed answer either way."""
import json

import pytest

pytest.importorskip("fastapi"); pytest.importorskip("openai"); pytest.importorskip("uvicorn")
import httpx
import openai

from minimind.serve import (Engine, ScriptedModel, ToolCallSplitter, load_model, make_app, parse_chat_request,
                            serve_in_thread, tool_prompt)
from minimind.tokenizer import encode_chat, load_tokenizer
from minimind.tools import CALCULATOR, LOOKUP, default_tools, parse_tool_calls, run_call
from tiny_chat import PLAIN_Q, tiny_chat_model

ARGS = {"expression": "12 * 7"}
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 7"}}\n</tool_call>'
LOOKUP_CALL = '<tool_call>\n{"name": "lookup", "arguments": {"entity": "Finkim", "attribute": "colour"}}\n</tool_call>'
NAMED = {"type": "function", "function": {"name": "calculator"}}


def script(prompt: str) -> str:
    "Replies chosen by the last user turn; after a tool response, a sentence with the result."
    if prompt.rstrip().endswith("</tool_response><|im_end|>\n<|im_start|>assistant"):
        return "It is " + prompt.split("<tool_response>\n")[-1].split("\n</tool_response>")[0] + "."
    if prompt.endswith('"arguments": '): return '{"expression": "1 + 1"}}\n</tool_call>'     # a named tool_choice's prefill
    last = prompt.split("<|im_start|>user\n")[-1]
    if last.startswith("two calls"): return f"Two at once.\n{CALL}\n{LOOKUP_CALL}"
    if last.startswith("broken"): return 'Oops <tool_call>\n{"name": "calculator", "arguments": 12 * 7}\n</tool_call> sorry'
    if last.startswith("unclosed"): return 'Wait <tool_call>\n{"name": "calculator", "arg'
    if last.startswith("only"): return CALL
    if last.startswith("hello"): return "Hello <tool there, no call."
    return "Let me compute.\n" + CALL


@pytest.fixture(scope="module")
def scripted():
    "The scripted model behind the app; yields (openai client, base URL, model)."
    tok = load_tokenizer()
    model = ScriptedModel(tok, script)
    with serve_in_thread(make_app(Engine(model, tok))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60), url, model


def ask(q): return [{"role": "user", "content": q}]


def create(client, q, **kw): return client.chat.completions.create(model="minimind", messages=ask(q), tools=[CALCULATOR, LOOKUP], **kw)


def test_tool_calls_non_streaming(scripted):
    client, _, model = scripted
    c = create(client, "What is 12 * 7?").choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == "Let me compute." and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == ARGS
    assert "# Tools" in model.prompts[-1] and '"name": "lookup"' in model.prompts[-1]     # both signatures rendered
    c = create(client, "only a call").choices[0]
    assert c.message.content is None and c.finish_reason == "tool_calls"                 # no text around it: null
    c = create(client, "two calls").choices[0]
    assert [t.function.name for t in c.message.tool_calls] == ["calculator", "lookup"] and len({t.id for t in c.message.tool_calls}) == 2
    c = create(client, "hello").choices[0]                                              # tools offered, none called
    assert c.finish_reason == "stop" and c.message.tool_calls is None and c.message.content == "Hello <tool there, no call."


def test_broken_calls_stay_text(scripted):
    client = scripted[0]
    for q in ("broken", "unclosed"):
        c = create(client, q).choices[0]
        assert c.finish_reason == "stop" and c.message.tool_calls is None and "<tool_call>" in c.message.content
        streamed = "".join(ch.choices[0].delta.content or "" for ch in create(client, q, stream=True) if ch.choices)
        assert streamed.strip() == c.message.content


def test_parallel_tool_calls_false_keeps_the_first(scripted):
    "OpenAI's parallel_tool_calls=false: at most one call, streamed or not; the default keeps them all."
    client, url, _ = scripted
    c = create(client, "two calls", parallel_tool_calls=False).choices[0]
    assert c.finish_reason == "tool_calls" and [t.function.name for t in c.message.tool_calls] == ["calculator"]
    chunks = sse(url, {"model": "minimind", "messages": ask("two calls"), "tools": [CALCULATOR, LOOKUP], "stream": True, "parallel_tool_calls": False})
    heads = [t["function"]["name"] for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", []) if "id" in t]
    assert heads == ["calculator"] and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    both = create(client, "two calls", parallel_tool_calls=True)
    assert len(both.choices[0].message.tool_calls) == 2
    one = create(client, "two calls", parallel_tool_calls=False)
    assert one.usage.completion_tokens < both.usage.completion_tokens       # generation stops at the first call's end


def sse(url, payload):
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_tool_calls_streaming(scripted):
    client, url, _ = scripted
    chunks = sse(url, {"model": "minimind", "messages": ask("two calls"), "tools": [CALCULATOR, LOOKUP], "stream": True})
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["tool_calls"]
    assert not any("<tool" in d.get("content", "") for d in deltas)                      # a call never leaks as text
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    heads = [t for t in calls if "id" in t]
    assert [(t["index"], t["type"], t["function"]["name"], t["function"]["arguments"]) for t in heads] == \
           [(0, "function", "calculator", ""), (1, "function", "lookup", "")]
    args = ["".join(t["function"]["arguments"] for t in calls if t["index"] == i) for i in (0, 1)]
    assert json.loads(args[0]) == ARGS and json.loads(args[1]) == {"entity": "Finkim", "attribute": "colour"}
    assert len([t for t in calls if t["index"] == 1 and "id" not in t]) > 1             # arguments in several pieces
    assert all(set(t) == {"index", "function"} and set(t["function"]) == {"arguments"} for t in calls if "id" not in t)
    # the official client's stream helper reassembles it into the non-streamed answer
    with client.chat.completions.stream(model="minimind", messages=ask("What is 12 * 7?"), tools=[CALCULATOR]) as s:
        whole = s.get_final_completion().choices[0]
    plain = create(client, "What is 12 * 7?").choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content.strip() == plain.message.content
    assert [(t.function.name, json.loads(t.function.arguments)) for t in whole.message.tool_calls] == [("calculator", ARGS)]


def test_tool_result_round_trip(scripted):
    "The client runs the call and sends the result back: the prompt carries the call and a <tool_response>; the reply uses it."
    client, _, model = scripted
    messages = ask("What is 12 * 7?")
    msg = client.chat.completions.create(model="minimind", messages=messages, tools=[CALCULATOR]).choices[0].message
    messages.append(msg.model_dump(exclude_none=True))
    for t in msg.tool_calls:
        messages.append({"role": "tool", "tool_call_id": t.id, "content": run_call({"name": t.function.name, "arguments": json.loads(t.function.arguments)}, default_tools())})
    final = client.chat.completions.create(model="minimind", messages=messages, tools=[CALCULATOR]).choices[0]
    assert "<tool_response>\n84\n</tool_response>" in model.prompts[-1] and CALL in model.prompts[-1]
    assert final.message.content == "It is 84." and final.finish_reason == "stop" and final.message.tool_calls is None
    # without tools in the request, the history with its tool turns is still rendered (no tools block)
    client.chat.completions.create(model="minimind", messages=messages)
    assert "<tool_response>" in model.prompts[-1] and "# Tools" not in model.prompts[-1]


def test_tool_choice_none_and_named(scripted):
    client, url, model = scripted
    c = create(client, "What is 12 * 7?", tool_choice="none").choices[0]
    assert "# Tools" not in model.prompts[-1] and c.message.tool_calls is None and c.finish_reason == "stop"
    assert CALL in c.message.content                                                  # not searched for calls: text
    c = create(client, "What is 12 * 7?", tool_choice=NAMED).choices[0]
    assert model.prompts[-1].endswith('<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": ')
    assert c.finish_reason == "tool_calls" and [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls] == [("calculator", {"expression": "1 + 1"})]
    chunks = sse(url, {"model": "minimind", "messages": ask("What is 12 * 7?"), "tools": [CALCULATOR], "tool_choice": NAMED, "stream": True})
    calls = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "calculator" and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads("".join(t["function"]["arguments"] for t in calls)) == {"expression": "1 + 1"}


TOOL = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
ASSISTANT_CALL = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]}
BAD = [  # (extra body fields, messages after the question, expected param)
    ({"tools": "calculator"}, [], "tools"),
    ({"tools": []}, [], "tools"),
    ({"tools": [{"type": "retrieval"}]}, [], "tools[0].type"),
    ({"tools": [{"type": "function"}]}, [], "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, [], "tools[0].function.name"),
    ({"tools": [TOOL, TOOL]}, [], "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, [], "tools[0].function.parameters"),
    ({"tools": [TOOL], "tool_choice": "always"}, [], "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "lookup"}}}, [], "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function"}}, [], "tool_choice"),
    ({"tool_choice": "required"}, [], "tool_choice"),
    ({"tools": [TOOL], "parallel_tool_calls": "no"}, [], "parallel_tool_calls"),
    ({}, [{"role": "tool", "content": "84"}], "messages[1].tool_call_id"),
    ({}, [{"role": "tool", "tool_call_id": "call_9", "content": "84"}], "messages[1].tool_call_id"),
    ({}, [ASSISTANT_CALL, {"role": "tool", "tool_call_id": "call_2", "content": "84"}], "messages[2].tool_call_id"),
    ({}, [{"role": "assistant", "tool_calls": "x"}], "messages[1].tool_calls"),
    ({}, [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}], "messages[1].tool_calls[0]"),
    ({}, [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}], "messages[1].tool_calls[0].function.arguments"),
    ({}, [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}], "messages[1].tool_calls[0].function.arguments"),
]


@pytest.mark.parametrize("extra,more,param", BAD, ids=range(len(BAD)))
def test_bad_tool_requests_get_400(scripted, extra, more, param):
    r = httpx.post(scripted[1] + "/v1/chat/completions", json={"model": "minimind", "messages": ask("hi") + more, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def test_plain_prompt_unchanged():
    "Without tools or tool turns the prompt is encode_chat's, as before tools existed; tool turns without tools render with no tools block."
    tok = load_tokenizer()
    engine = Engine(ScriptedModel(tok, script), tok)
    msgs = [{"role": "system", "content": "Be brief."}, *ask("hi"), {"role": "assistant", "content": "Hello."}, *ask("and?")]
    req = parse_chat_request({"model": "minimind", "messages": msgs})
    assert tool_prompt(req) is None and engine.job_for(req).ids == encode_chat(tok, msgs, add_generation_prompt=True)
    assert not engine.job_for(req).tools and engine.job_for(req).prefill == ""


def test_splitter_matches_parse_tool_calls():
    "Fed one character at a time, the stream splitter finds the calls and text parse_tool_calls finds in the whole."
    for text in [script("x<|im_start|>user\n" + q) for q in ("two calls", "broken", "unclosed", "only", "hello", "What")]:
        s, items = ToolCallSplitter(), []
        for ch in text: items += s.push(ch)
        items += s.flush()
        content, calls, _ = parse_tool_calls(text)
        assert [v for k, v in items if k == "call"] == calls
        assert " ".join("".join(v for k, v in items if k == "content").split()) == " ".join(content.split())


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    model, tok = load_model(tiny_chat_model(tmp_path_factory.mktemp("tiny_chat")), "cpu")
    with serve_in_thread(make_app(Engine(model, tok, max_context=1024))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60), url


@pytest.mark.parametrize("choice", [NAMED, "required", "auto"])
def test_real_model_forced_tool_choice(real, choice):
    "The real (tiny) model, end to end: whatever it writes after the prefill, the answer is well formed, never a 500."
    client, url = real
    for seed in (0, 1):
        r = client.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), tools=[CALCULATOR], tool_choice=choice,
                                           temperature=1.0, seed=seed, max_tokens=48)
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls" and all(isinstance(json.loads(t.function.arguments), dict) for t in c.message.tool_calls)
            if choice == NAMED: assert c.message.tool_calls[0].function.name == "calculator"
        else:
            assert c.finish_reason in ("stop", "length")
            if choice == NAMED: assert c.message.content.startswith('<tool_call>\n{"name": "calculator", "arguments":')
        chunks = sse(url, {"model": "minimind", "messages": ask(PLAIN_Q), "tools": [CALCULATOR], "tool_choice": choice,
                           "temperature": 1.0, "seed": seed, "max_tokens": 48, "stream": True})
        assert chunks[-1]["choices"][0]["finish_reason"] == c.finish_reason
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks).strip() == (c.message.content or "")


def test_a_model_with_built_in_tools_gets_no_tools_block():
    "A tool model saved by 07a (tools.json: announce false) is served without the # Tools block; its calls still come back as tool_calls."
    tok = load_tokenizer()
    model = ScriptedModel(tok, script)
    with serve_in_thread(make_app(Engine(model, tok, announce_tools=False))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        c = create(client, "What is 12 * 7?").choices[0]
    assert c.finish_reason == "tool_calls" and json.loads(c.message.tool_calls[0].function.arguments) == ARGS
    assert "# Tools" not in model.prompts[-1] and model.prompts[-1].startswith("<|im_start|>user")


def test_engine_from_folder_reads_the_folders_tools_json(tmp_path):
    "Engine.from_folder (minimind serve, the chat page) announces the tools unless the folder's tools.json says they are built in."
    folder = tiny_chat_model(tmp_path / "tiny_chat")
    assert Engine.from_folder(folder, "cpu", max_context=256).announce_tools is True
    (folder / "tools.json").write_text(json.dumps({"tools": list(default_tools()), "announce": False}))
    engine = Engine.from_folder(folder, "cpu", max_context=256)
    assert engine.announce_tools is False and engine.max_context == 256
