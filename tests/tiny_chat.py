"""A chat model small enough to train in seconds for the server and chat-page tests: `minimind.serve.stand_in_model`
(notebook 09), which memorises two conversations, one answered with `<think>` reasoning, so greedy decoding gives
known replies."""
from minimind.serve import STAND_IN_CHATS, split_think, stand_in_model as tiny_chat_model  # noqa: F401

(THINK_Q, _think_reply), (PLAIN_Q, PLAIN_A) = STAND_IN_CHATS.items()
THINK_REASONING, THINK_ANSWER = split_think(_think_reply)
