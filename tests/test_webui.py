"""The chat page (minimind/webui.py): streamlit's AppTest types questions and reads the replies; headless Chromium
loads the page served on localhost, asks a question, waits for the streamed answer and saves a screenshot."""
import os
import subprocess
import sys
import time
import urllib.request

import pytest

st = pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

import minimind.webui
from test_browser import CHROMEDRIVER, CHROMIUM, chrome, free_port, save_png  # noqa: F401 (chrome is a fixture)
from tiny_chat import PLAIN_A, PLAIN_Q, THINK_ANSWER, THINK_Q, THINK_REASONING, tiny_chat_model

PAGE = minimind.webui.__file__


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))


def test_apptest_chat(model_dir):
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and at.info and "model folder" in at.info[0].value     # nothing loaded yet
    at.sidebar.text_input[0].set_value(str(model_dir))
    at.sidebar.slider[0].set_value(0.0)                                             # temperature 0: greedy
    at.run()
    assert not at.exception and not at.error
    at.chat_input[0].set_value(PLAIN_Q).run()
    assert not at.exception
    msgs = at.chat_message
    assert [m.name for m in msgs] == ["user", "assistant"]
    assert msgs[1].markdown[-1].value == PLAIN_A
    at.sidebar.slider[2].set_value(0)                                               # history 0: the question alone
    at.chat_input[0].set_value(THINK_Q).run()                                       # a reasoning reply
    msgs = at.chat_message
    assert [m.name for m in msgs] == ["user", "assistant"] * 2
    assert msgs[3].markdown[-1].value == THINK_ANSWER
    assert msgs[3].expander[0].label == "thinking" and msgs[3].expander[0].markdown[0].value == THINK_REASONING
    at.sidebar.toggle[0].set_value(False).run()                                     # think toggle off: no expander
    assert not at.chat_message[3].expander and at.chat_message[3].markdown[-1].value == THINK_ANSWER
    assert at.session_state.history[-1] == {"role": "assistant", "content": THINK_ANSWER, "reasoning": THINK_REASONING}


def test_apptest_bad_folder(tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.sidebar.text_input[0].set_value(str(tmp_path / "nothing")).run()
    assert not at.exception and at.error and f"{tmp_path / 'nothing'}: no such model folder" in at.error[0].value


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="Debian's chromium and chromium-driver are not installed")
def test_chat_page_in_chromium(model_dir, chrome, tmp_path):
    "streamlit serves the page on 127.0.0.1; Chromium types a question and sees the streamed answer."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    port, log = free_port(), tmp_path / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", PAGE, "--server.address", "127.0.0.1", "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--", "--model", str(model_dir), "--temperature", "0"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp_path)})
    try:
        base, t0 = f"http://127.0.0.1:{port}", time.time()
        while True:
            assert proc.poll() is None, f"streamlit exited:\n{log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok": break
            except OSError: pass
            assert time.time() - t0 < 90, f"streamlit did not come up:\n{log.read_text()[-2000:]}"
            time.sleep(0.3)
        chrome.get(base)
        wait = WebDriverWait(chrome, 120, poll_frequency=0.5)
        box = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))[0]
        box.send_keys(PLAIN_Q); box.send_keys(Keys.ENTER)
        def answered(d):
            msgs = d.find_elements(By.CSS_SELECTOR, "[data-testid='stChatMessageContent']")
            return len(msgs) >= 2 and msgs[-1].text.strip() == PLAIN_A          # the whole answer, no cursor left
        try: wait.until(answered)
        except Exception:
            save_png(chrome.get_screenshot_as_png(), "webui_chat_timeout.png")
            raise AssertionError(f"no streamed answer on the page; streamlit log:\n{log.read_text()[-2000:]}")
        save_png(chrome.get_screenshot_as_png(), "webui_chat.png")
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def test_tool_turn_runs_the_calls():
    "tool_turn (the page's agent loop on the engine): the call is run, its result sent back, the answer returned; no call text on screen."
    from minimind.serve import Engine, ScriptedModel
    from minimind.tokenizer import load_tokenizer
    from minimind.tools import default_tools

    def script(prompt):
        if prompt.rstrip().endswith("</tool_response><|im_end|>\n<|im_start|>assistant"):
            return "It is " + prompt.split("<tool_response>\n")[-1].split("\n</tool_response>")[0] + "."
        return 'Computing.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 7"}}\n</tool_call>'
    tok = load_tokenizer()
    model, shown = ScriptedModel(tok, script), []
    reasoning, content, calls = minimind.webui.tool_turn(Engine(model, tok), [{"role": "user", "content": "What is 12 * 7?"}],
                                                         default_tools(), lambda r, c: shown.append(c), temperature=0)
    assert (content, calls) == ("It is 84.", [{"name": "calculator", "arguments": {"expression": "12 * 7"}, "result": "84"}])
    assert any(s.strip() == "Computing." for s in shown) and not any("<tool" in s for s in shown) and "<tool_response>\n84\n" in model.prompts[-1]
    assert minimind.webui.tool_label(calls[0]) == 'calculator(expression="12 * 7")'
    _, content, calls = minimind.webui.tool_turn(Engine(model, tok), [{"role": "user", "content": "hi"}], {})   # no tools: plain chat
    assert calls == [] and "<tool_call>" in content and "# Tools" not in model.prompts[-1]


def test_tool_turn_is_the_agent_loop(monkeypatch):
    "tool_turn is 07a's agent_loop on the engine: an unclosed call is answered with the parser's error, and a model that keeps calling stops at max_steps."
    import minimind.tools
    from minimind.serve import Engine, ScriptedModel
    from minimind.tokenizer import load_tokenizer
    from minimind.tools import default_tools
    loops, agent_loop = [], minimind.tools.agent_loop
    def spy(*args, **kw): loops.append(kw); return agent_loop(*args, **kw)
    monkeypatch.setattr(minimind.tools, "agent_loop", spy)

    def script(prompt):
        if "unclosed <tool_call>" in prompt: return "Sorry, it is 84."
        return 'Computing.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 7"}}'   # never closed
    tok = load_tokenizer()
    model = ScriptedModel(tok, script)
    _, content, calls = minimind.webui.tool_turn(Engine(model, tok), [{"role": "user", "content": "What is 12 * 7?"}], default_tools(), temperature=0)
    assert (content, calls, len(model.prompts)) == ("Sorry, it is 84.", [], 2) and loops == [{"renders": True}]
    answer = model.prompts[1].split("<|im_start|>user\n<tool_response>\n")[-1]          # what the model read after its call
    assert answer.startswith('{"error": "unclosed <tool_call>') and answer.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    looping = ScriptedModel(tok, lambda prompt: '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 1"}}\n</tool_call>')
    _, content, calls = minimind.webui.tool_turn(Engine(looping, tok), [{"role": "user", "content": "?"}], default_tools(), max_steps=3)
    assert len(looping.prompts) == 3 and [c["result"] for c in calls] == ["2"] * 3 and content == ""


def _tool_reply_page():
    import minimind.webui
    minimind.webui.show_reply("", "It is 84.", True, [{"name": "calculator", "arguments": {"expression": "12 * 7"}, "result": "84"}])


def test_show_reply_with_tool_calls():
    at = AppTest.from_function(_tool_reply_page).run()
    assert not at.exception
    assert at.expander[0].label == '🔧 calculator(expression="12 * 7")' and at.expander[0].code[0].value == "84"
    assert at.markdown[-1].value == "It is 84."


def test_apptest_tools_checkbox(model_dir):
    "With the built-in tools ticked, the stand-in (which never learnt tools) still gets a question answered, without an error."
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.sidebar.text_input[0].set_value(str(model_dir)); at.sidebar.slider[0].set_value(0.0)
    at.sidebar.slider[3].set_value(48)                                              # max new tokens: a short reply
    at.sidebar.checkbox[0].check().run()
    at.chat_input[0].set_value(PLAIN_Q).run()
    assert not at.exception and not at.error and [m.name for m in at.chat_message] == ["user", "assistant"]
    assert at.session_state.history[-1]["role"] == "assistant"
