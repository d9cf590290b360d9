"""A chat model small enough to train in seconds for the server and chat-page tests: it memorises two
conversations, one answered with `<think>` reasoning, so greedy decoding gives known replies."""
from pathlib import Path

import torch

from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.tokenizer import EOS_ID, encode_chat, load_tokenizer, save_tokenizer

THINK_Q, THINK_REASONING, THINK_ANSWER = "What is 2+2?", "Two plus two makes four.", "4"
PLAIN_Q, PLAIN_A = "Hello", "Hello! I am MiniMind, 你好。"
CONVERSATIONS = [
    [{"role": "user", "content": THINK_Q},
     {"role": "assistant", "content": f"<think>\n{THINK_REASONING}\n</think>\n<answer>\n{THINK_ANSWER}\n</answer>"}],
    [{"role": "user", "content": PLAIN_Q}, {"role": "assistant", "content": PLAIN_A}],
]


def tiny_chat_model(folder, steps: int = 200, max_position_embeddings: int = 1024, seed: int = 0) -> Path:
    "Train a 2-layer model on CONVERSATIONS (loss on the replies and their <|im_end|>); save it with the tokenizer."
    torch.manual_seed(seed)
    tok = load_tokenizer()
    cfg = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings)
    model = MiniMindForCausalLM(cfg)
    rows = []
    for conv in CONVERSATIONS:
        prompt = encode_chat(tok, conv[:1], add_generation_prompt=True)
        ids = encode_chat(tok, conv)[:-1]                        # ends with <|im_end|> (the trailing newline dropped)
        assert ids[-1] == EOS_ID
        rows.append((ids, [-100] * len(prompt) + ids[len(prompt):]))
    T = max(len(i) for i, _ in rows)
    ids = torch.tensor([i + [0] * (T - len(i)) for i, _ in rows])
    labels = torch.tensor([l + [-100] * (T - len(l)) for _, l in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(ids, labels=labels).loss
        opt.zero_grad(); loss.backward(); opt.step()
    folder = Path(folder)
    model.eval().save_pretrained(folder)
    save_tokenizer(tok, folder)
    return folder
