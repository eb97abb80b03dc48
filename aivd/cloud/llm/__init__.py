"""Multimodal-LLM cloud backends: versioned prompts and answer parsing (`prompts`), any OpenAI-compatible
server (`openai_backend`, needs the `llm` extra) and a local Hugging Face model (`transformers_backend`).

Nothing heavy is imported here: the backends import their clients when they are used.
"""
