"""minimind.serve with its real clients: the official `openai` client (streaming and not), bad requests answered
4xx in OpenAI's error shape, 24 simultaneous streaming clients on loopback, and a client leaving mid-stream."""
import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("fastapi"); pytest.importorskip("openai"); pytest.importorskip("uvicorn")
import httpx
import openai

from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.serve import (APIError, Engine, StopChecker, StreamDecoder, ThinkSplitter, load_model, make_app,
                            parse_chat_request, serve_in_thread, split_think)
from minimind.tokenizer import load_tokenizer
from tiny_chat import PLAIN_A, PLAIN_Q, THINK_ANSWER, THINK_Q, THINK_REASONING, tiny_chat_model

KEY = "sk-test-minimind"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))


@pytest.fixture(scope="module")
def server(model_dir):
    "The tiny chat model behind the app on a free loopback port, in a thread; yields (base URL, engine)."
    model, tok = load_model(model_dir, "cpu")
    engine = Engine(model, tok, max_context=256)
    with serve_in_thread(make_app(engine)) as url: yield url, engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(q): return [{"role": "user", "content": q}]


def test_openai_client_non_streaming(client):
    assert [m.id for m in client.models.list().data] == ["minimind"]
    r = client.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), temperature=0, max_tokens=64)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "minimind"
    assert r.choices[0].message.content == PLAIN_A and r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.prompt_tokens > 5 and 5 < u.completion_tokens < 64 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    # reasoning model output: <think> goes to reasoning_content, the answer (tags dropped) to content
    r = client.chat.completions.create(model="minimind", messages=ask(THINK_Q), temperature=0, max_tokens=64)
    assert r.choices[0].message.content == THINK_ANSWER
    assert r.choices[0].message.reasoning_content == THINK_REASONING
    # max_tokens cuts it: finish_reason "length", exactly that many tokens
    r = client.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3 and PLAIN_A.startswith(r.choices[0].message.content)
    # ignore_eos (vLLM's extra parameter): past <|im_end|> up to max_tokens
    r = client.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), temperature=0, max_tokens=40, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40 and r.choices[0].message.content.startswith(PLAIN_A)
    # stop strings: the text before the stop string, finish_reason "stop"
    r = client.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), temperature=0, max_tokens=64, stop=["MiniMind"])
    assert r.choices[0].message.content == PLAIN_A.split("MiniMind")[0].strip() and r.choices[0].finish_reason == "stop"


def test_openai_client_streaming(client):
    chunks = list(client.chat.completions.create(model="minimind", messages=ask(THINK_Q), temperature=0, max_tokens=64,
                                                 stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" and c.model == "minimind" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    body = [c for c in chunks if c.choices]
    assert all(c.choices[0].index == 0 for c in body)
    assert [c.choices[0].finish_reason for c in body] == [None] * (len(body) - 1) + ["stop"]
    content = "".join(c.choices[0].delta.content or "" for c in body)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in body)
    assert content.strip() == THINK_ANSWER and reasoning.strip() == THINK_REASONING
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 10     # the usage chunk comes last
    # seeded sampling repeats itself; the streamed text equals the non-streamed one
    kw = dict(model="minimind", messages=ask("Tell me a story"), temperature=1.0, top_p=0.9, max_tokens=30, seed=7)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices)
    assert a == client.chat.completions.create(**kw).choices[0].message.content and a == b.strip()


def raw_sse(url, payload):
    "POST with stream=True; returns the raw `data:` payloads (strings) in order."
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_sse_wire_format(server):
    events = raw_sse(server[0], {"model": "minimind", "messages": ask(PLAIN_Q), "temperature": 0, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {tuple(sorted(c)) for c in chunks} == {("choices", "created", "id", "model", "object")}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == PLAIN_A


BAD = [  # (raw body, expected status, expected param)
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"messages": ask("hi")}), 400, "model"),
    (json.dumps({"model": "gpt-4", "messages": ask("hi")}), 404, "model"),
    (json.dumps({"model": "minimind", "messages": []}), 400, "messages"),
    (json.dumps({"model": "minimind", "messages": "hi"}), 400, "messages"),
    (json.dumps({"model": "minimind", "messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages[0].role"),
    (json.dumps({"model": "minimind", "messages": [{"role": "user", "content": 42}]}), 400, "messages[0].content"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "temperature": "hot"}), 400, "temperature"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "temperature": 9}), 400, "temperature"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "max_tokens": 1.5}), 400, "max_tokens"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "max_tokens": 0}), 400, "max_tokens"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "stream": "yes"}), 400, "stream"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "ignore_eos": 1}), 400, "ignore_eos"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "stop": [1]}), 400, "stop"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "n": 2}), 400, "n"),
    (json.dumps({"model": "minimind", "messages": ask("hi"), "seed": "x"}), 400, "seed"),
    (json.dumps({"model": "minimind", "messages": ask("word " * 400)}), 400, "messages"),   # over the 256-token context
    (b"\xff\xfe", 400, None),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=range(len(BAD)))
def test_bad_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(server[0] + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param


def test_other_errors_and_limits(server, client):
    url, engine = server
    for r, status in [(httpx.get(url + "/v1/nothing"), 404), (httpx.get(url + "/v1/chat/completions"), 405),
                      (httpx.post(url + "/v1/chat/completions", content=b"x" * (5 << 20)), 413)]:
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="minimind", messages=ask("word " * 400))
    # max_tokens is clamped to the context left: a huge value ends at the context, not in an error
    r = client.chat.completions.create(model="minimind", messages=ask("Tell me a story"), max_tokens=100000, temperature=0)
    assert r.usage.total_tokens <= engine.max_context
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_api_key(model_dir):
    model, tok = load_model(model_dir, "cpu")
    with serve_in_thread(make_app(Engine(model, tok), api_key=KEY)) as url:
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), temperature=0).choices[0].message.content == PLAIN_A


def test_24_concurrent_streams(server):
    "24 clients stream at once: every stream completes with [DONE] and the greedy text each would get alone."
    url, engine = server
    alone = {q: httpx.post(url + "/v1/chat/completions", timeout=60, json={"model": "minimind", "messages": ask(q), "temperature": 0,
                                                                          "max_tokens": 40}).json()["choices"][0]["message"]
             for q in (PLAIN_Q, THINK_Q)}

    async def one(c, q):
        payload = {"model": "minimind", "messages": ask(q), "temperature": 0, "max_tokens": 40, "stream": True}
        async with c.stream("POST", url + "/v1/chat/completions", json=payload) as r:
            assert r.status_code == 200
            events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
        chunks = [json.loads(e) for e in events[:-1]]
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        return events[-1], "".join(d.get("content", "") for d in deltas).strip(), "".join(d.get("reasoning_content", "") for d in deltas).strip()

    async def main():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:
            return await asyncio.gather(*[one(c, (PLAIN_Q, THINK_Q)[i % 2]) for i in range(24)])

    t0, n_before = time.time(), len(engine.finished)
    results = asyncio.run(main())
    assert len(results) == 24 and all(done == "[DONE]" for done, _, _ in results)
    for i, (_, content, reasoning) in enumerate(results):
        want = alone[(PLAIN_Q, THINK_Q)[i % 2]]
        assert content == want["content"] and reasoning == want.get("reasoning_content", "")
    assert len(engine.finished) - n_before == 24 and engine.current is None
    assert httpx.get(url + "/health").json()["status"] == "ok"
    print(f"24 concurrent streams in {time.time() - t0:.1f} s")


def test_disconnect_mid_stream_frees_the_server():
    "A client that leaves mid-stream stops its generation; the next request is served at once."
    torch.manual_seed(0)  # an untrained model never emits <|im_end|> here: it would run to max_tokens
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=100_000)).eval()
    engine = Engine(model, load_tokenizer())
    with serve_in_thread(make_app(engine)) as url:
        payload = {"model": "minimind", "messages": ask("go on forever"), "max_tokens": 50_000, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=30) as r:
            lines = r.iter_lines()              # keep the iterator: dropping it closes the connection
            first = next(lines)
            assert first.startswith("data: ") and json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
            t0 = time.time()
            while (engine.current is None or engine.current.n_generated < 20) and time.time() - t0 < 20: time.sleep(0.01)
            assert engine.current is not None and engine.current.n_generated >= 20, engine.finished  # well under way
        t0 = time.time()
        while not engine.finished and time.time() - t0 < 10: time.sleep(0.02)
        assert engine.finished, "the generation did not stop after the client left"
        n, why = engine.finished[0]
        assert why == "cancelled" and 20 <= n < 50_000
        r = httpx.post(url + "/v1/chat/completions", json={"model": "minimind", "messages": ask("hi"), "max_tokens": 4}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        print(f"cancelled after {n} tokens; next request answered {time.time() - t0:.2f} s after the client left")


def test_stream_helpers():
    tok = load_tokenizer()
    text = "naïve 你好 🙂 ok"
    dec, out = StreamDecoder(tok), []
    for t in tok.encode(text).ids: out.append(dec.push(t))
    assert "".join(out) + dec.flush() == text and not any("\ufffd" in piece for piece in out)
    s = StopChecker(["END", "\n\n"])
    assert s.push("abc E") == ("abc ", False) and s.push("N") == ("", False) and s.push("Dxyz") == ("", True)
    s = StopChecker(["END"])
    assert s.push("abc E") == ("abc ", False) and s.push("x") == ("Ex", False) and s.flush() == ""
    sp, got = ThinkSplitter(), []
    for piece in ["<thi", "nk>\nstep 1 < 2", "</th", "ink>\n<answer>\n", "yes</answer>"]: got.append(sp.push(piece))
    got.append(sp.flush())
    assert "".join(r for r, _ in got) == "step 1 < 2" and "".join(c for _, c in got) == "yes"
    assert split_think("plain answer") == ("", "plain answer")
    with pytest.raises(APIError) as e: parse_chat_request({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert e.value.status == 400
    req = parse_chat_request({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "stop": "x"})
    assert req.messages == [{"role": "system", "content": "ab"}] and req.stop == ["x"]


def test_cli_serve(model_dir, tmp_path):
    "`minimind serve` binds 127.0.0.1, answers the openai client, and a bad folder is one line on stderr."
    bad = subprocess.run([sys.executable, "-m", "minimind.cli", "serve", "--model", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and f"{tmp_path / 'nothing'}: no such model folder" in bad.stderr
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "minimind.cli", "serve", "--model", str(model_dir), "--port", str(port),
                             "--api-key", KEY, "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200: break
            except httpx.TransportError: pass
            assert time.time() - t0 < 60, "minimind serve did not come up"
            time.sleep(0.2)
        oa = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        assert oa.chat.completions.create(model="minimind", messages=ask(PLAIN_Q), temperature=0).choices[0].message.content == PLAIN_A
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.terminate(); proc.wait(20)


def test_adapter_is_merged_and_served(model_dir, tmp_path):
    "`--adapter`: load_model applies a minimind.lora adapter (merged); the server then answers with the adapted model."
    from minimind.lora import apply_lora, lora_parameters, save_adapter
    from minimind.tokenizer import encode_chat
    tuned, tok = load_model(model_dir, "cpu")
    apply_lora(tuned)
    with torch.no_grad():
        for p in lora_parameters(tuned): p.normal_(0, 0.3)          # an adapter that changes the replies
    save_adapter(tuned, tmp_path / "adapter")
    base, _ = load_model(model_dir, "cpu")
    merged, _ = load_model(model_dir, "cpu", adapter=tmp_path / "adapter")
    ids = torch.tensor([encode_chat(tok, ask(PLAIN_Q), add_generation_prompt=True)])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-2)
    with serve_in_thread(make_app(Engine(merged, tok))) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "minimind", "messages": ask(PLAIN_Q), "temperature": 0, "max_tokens": 16}, timeout=60)
        want = tok.decode(list(tuned.stream_generate(ids[0].tolist(), 16, temperature=0)))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == split_think(want)[1]
