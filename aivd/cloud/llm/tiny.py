"""A tiny randomly initialised Qwen2-VL model, built locally, to test the local-VLM path without downloading weights.

It has the real architecture (a ViT vision tower with patch merging, multimodal rotary positions, a Qwen2
decoder) at toy sizes, a byte-level BPE tokenizer trained on the fly on aivd's own vocabulary (the knowledge
base, the answer schema and example answers, so answers are a few hundred tokens rather than a thousand
bytes; byte-level, so any text still tokenizes), the Qwen special tokens its processor and chat template use,
and the PIL image processor (torchvision is not a dependency). Everything is written with `save_pretrained`,
so `AutoModelForImageTextToText`, `AutoTokenizer` and `AutoImageProcessor.from_pretrained(out_dir)` load it
offline like a real checkpoint (and `AutoProcessor` where torchvision is installed). The same seed gives the
same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from aivd.cloud.knowledge import KnowledgeBase
from aivd.schema.analysis import Measurements, analysis_json_schema

# Qwen2-VL's own special tokens, in its order; the processor and the model config refer to them by id.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
VOCAB_SIZE = 1024
HIDDEN = 64
# Crops are small; capping the pixels keeps the tiny model at 4 to 16 vision tokens per image.
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112

# Qwen2-VL-Instruct's chat template (one image placeholder per {"type": "image"} part), without its
# default system prompt so that training data and prompts say what the model is told.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    """Text whose frequent pieces become tokens: the knowledge base, the schema, and answers built from it."""
    knowledge = KnowledgeBase.load()
    classes = list(knowledge.classes)
    texts = [json.dumps(analysis_json_schema(classes)), json.dumps(knowledge.model_dump(mode="json"))]
    sizes = [Measurements(width_px=w, height_px=w * 0.7, width_mm=w / 48, height_mm=w * 0.7 / 48) for w in (8.0, 20.0, 45.0)]
    for name in classes:
        for size in sizes:
            for is_defect in (True, False):
                texts.append(knowledge.analysis(name, 0.87, is_defect, size, name).model_dump_json(exclude={"measurements"}))
    texts.append(" ".join(str(n) for n in range(100)) + " 0.0 0.5 1.0 true false null")
    return texts


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=4096,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def build_tiny_vlm(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL (model, tokenizer, image processor, processor with chat template) to `out_dir`."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = _tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            # head_dim 16: the multimodal rotary sections (time, height, width) cover its 8 frequency pairs.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            # Wider than a real model's 0.02: at width 64 that would cap every logit near 1, so no adapter
            # could make an answer likely and tests could not see training work.
            "initializer_range": 0.15,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": HIDDEN, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    tokenizer.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(out_dir)
    # Written by hand because transformers 5 cannot build a Qwen2VLProcessor without torchvision (its video
    # processor needs it); where torchvision is installed, AutoProcessor loads the folder from this.
    (out_dir / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2) + "\n")
    return out_dir
