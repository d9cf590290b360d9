"""The widgets work where learners use them: JupyterLab served on localhost, headless Chromium opens
01_attention_rope, runs all cells, and finds the attention viewer's slider and its rendered heatmap."""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NBS, ROOT, TEST_OUTPUT

NOTEBOOK = "01_attention_rope.ipynb"
VIEWER = ".mm-attention-viewer"          # the VBox the notebook's attention viewer adds this class to
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages
RUN_TIMEOUT = 480                        # seconds for Run All to bring up the viewer (2 shared cores)

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="Debian's chromium and chromium-driver are not installed (`make browser`)")


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90):
    "Polls `url` until it answers 200; fails early if the server process died."
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None: pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.3)
    pytest.fail(f"jupyter lab did not answer {url} in {timeout} s:\n{log.read_text()[-3000:]}")


def user_settings(folder: Path, plugins: dict):
    "Writes JupyterLab user settings: {'<package>/<plugin>': {key: value}} under @jupyterlab/."
    for plugin, values in plugins.items():
        f = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))


@pytest.fixture
def lab(tmp_path):
    "JupyterLab on a free localhost port, serving a temp copy of nbs/ (beside the repo's dataset/), with a token."
    course = tmp_path / "course"
    shutil.copytree(NBS, course / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    if (ROOT / "dataset").exists(): (course / "dataset").symlink_to(ROOT / "dataset")  # notebooks read ../dataset
    port, token, log = free_port(), secrets.token_hex(16), tmp_path / "jupyter-lab.log"
    settings = tmp_path / "lab-settings"
    user_settings(settings, {  # no "get notified about Jupyter news?" toast over the page; every cell in the DOM
        "apputils-extension/notification": {"fetchNews": "false"},  # (JupyterLab 4 otherwise renders only the
        "notebook-extension/tracker": {"windowingMode": "none"}})   #  cells near the viewport)
    env = {**os.environ,  # fresh settings and workspace: no saved layout, no dialogs from an earlier session
           "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={course / 'nbs'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0: cmd.append("--allow-root")  # CI runs as root
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=course / "nbs")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/status?token={token}", proc, log)
        yield base, token, log
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def start_chrome(profile: Path):
    "Headless Chromium driven by Debian's chromedriver; background networking off (the network is closed)."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


@pytest.fixture
def chrome(tmp_path):
    "A headless Chromium for one test."
    driver = start_chrome(tmp_path / "chrome-profile")
    try: yield driver
    finally: driver.quit()


def png_pixels(data: bytes):
    "A PNG's pixels as an (H, W, 3) uint8 array."
    import io
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def screenshot_of(driver, url: str, css: str, name: str, timeout: float = 60):
    "Opens `url`, scrolls the element `css` into view once its image has loaded, and saves its screenshot as test-output/`name`."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    el = WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const i = arguments[0].querySelector('img') || arguments[0]; return i.complete && i.naturalWidth > 0", el))
    time.sleep(0.3)
    data = el.screenshot_as_png
    save_png(data, name)
    return el, data


def viewer_state(driver) -> dict:
    "What the page shows now: the viewer's slider count and heatmap image, and any error output."
    return driver.execute_script("""
        const v = document.querySelector(arguments[0]);
        const errs = [...document.querySelectorAll('.jp-OutputArea-output')]
                     .map(e => e.innerText).filter(t => /Traceback \\(most recent call last\\)/.test(t))
                     .map(t => t.slice(0, 1500));
        const img = v && v.querySelector('img');
        return {viewer: !!v, sliders: v ? v.querySelectorAll('.widget-slider, .widget-hslider').length : 0,
                img_width: img && img.complete ? img.naturalWidth : 0, img_src: img ? img.src.slice(-200) : null,
                errors: errs.slice(0, 3), cells: document.querySelectorAll('.jp-Notebook .jp-Cell').length,
                executed: [...document.querySelectorAll('.jp-InputPrompt')].filter(p => /\\[\\d+\\]/.test(p.innerText)).length};""", VIEWER)


def kernel_idle(driver) -> bool:
    "Whether JupyterLab's status bar shows the notebook's kernel connected and idle."
    text = driver.execute_script("const s = document.querySelector('#jp-main-statusbar'); return s ? s.innerText : ''")
    return "| Idle" in text and "No Kernel" not in text


def accept_dialog(driver):
    "Accepts a JupyterLab dialog if one is open (e.g. Select Kernel, whose default is the notebook's python3)."
    from selenium.webdriver.common.by import By
    for b in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept"): b.click()


def click_menu(driver, wait, menu: str, item: str):
    "Opens JupyterLab's top menu `menu` and clicks its entry `item` (Lumino menus, found by their labels)."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    wait.until(EC.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[normalize-space()='{menu}']]"))).click()
    wait.until(EC.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-Menu-item')][.//div[contains(@class,'lm-Menu-itemLabel')"
                   f" and normalize-space()='{item}']]"))).click()


def save_png(data: bytes, name: str) -> Path:
    "Writes a screenshot under test-output/ and checks it is a non-empty PNG."
    TEST_OUTPUT.mkdir(exist_ok=True)
    path = TEST_OUTPUT / name
    path.write_bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, f"{path} is not a real PNG"
    print(f"screenshot: {path}")
    return path


def test_attention_viewer_in_jupyterlab(lab, chrome, record_property):
    "Run All in JupyterLab renders the viewer (sliders + heatmap image); moving a slider redraws the heatmap."
    if not (NBS / NOTEBOOK).exists(): pytest.fail(f"nbs/{NOTEBOOK} is missing")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    base, token, log = lab
    for old in TEST_OUTPUT.glob("browser_*.png"): old.unlink()  # no stale screenshot from an earlier run
    t0 = time.time()
    chrome.get(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    wait = WebDriverWait(chrome, 120)
    # the notebook is open and its kernel is connected: the status bar reads "python3 | Idle" (clicking Run All
    # before that, while it says "No Kernel | Initializing", only brings up the Select Kernel dialog)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"))
    wait.until(kernel_idle)
    click_menu(chrome, wait, "Run", "Run All Cells")

    state = {}
    def rendered(d):
        accept_dialog(d)
        state.update(viewer_state(d))
        if state["errors"]: pytest.fail(f"a cell failed in JupyterLab: {state['errors']}")
        return state["viewer"] and state["sliders"] >= 1 and state["img_width"] > 0
    try: WebDriverWait(chrome, RUN_TIMEOUT, poll_frequency=1).until(rendered)
    except Exception:
        save_png(chrome.get_screenshot_as_png(), "browser_attention_viewer_timeout.png")
        raise AssertionError(f"no attention viewer with slider and heatmap after {RUN_TIMEOUT} s: {state}\n"
                             f"jupyter log tail:\n{log.read_text()[-2000:]}")
    record_property("seconds", round(time.time() - t0, 1))

    viewer = chrome.find_element(By.CSS_SELECTOR, VIEWER)
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})", viewer)
    time.sleep(0.5)
    save_png(chrome.get_screenshot_as_png(), "browser_01_attention_rope.png")
    save_png(viewer.screenshot_as_png, "browser_attention_viewer.png")

    # move a slider one step with the keyboard (noUiSlider handles take arrow keys): the heatmap redraws
    before = state["img_src"]
    handles = [h for h in viewer.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle, .widget-hslider .noUi-handle")
               if float(h.get_attribute("aria-valuemax")) > float(h.get_attribute("aria-valuemin"))]
    assert handles, "no slider in the viewer has a range to move over"
    handle = handles[0]
    at_max = float(handle.get_attribute("aria-valuenow")) >= float(handle.get_attribute("aria-valuemax"))
    handle.click()
    handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
    WebDriverWait(chrome, 60, poll_frequency=0.5).until(
        lambda d: (s := viewer_state(d))["img_width"] > 0 and s["img_src"] != before)
    save_png(viewer.screenshot_as_png, "browser_attention_viewer_moved.png")
