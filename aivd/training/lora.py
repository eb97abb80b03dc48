"""`aivd finetune train`: a LoRA adapter for a local vision-language model, from `aivd finetune build` data.

peft adds rank-`rank` matrices A (random) and B (zero, so training starts from the base model's exact
behaviour) beside the language model's attention and MLP projections, scaled by `alpha / rank`; only they
train. The loss is the answer tokens' cross-entropy (the prompt and images are context, not targets) plus
`l2` times the squared norm of the LoRA weights, which keeps the update small where the data set is. accelerate
runs it: bf16 mixed precision on a GPU that has it (fp16 otherwise), full precision on the CPU, and gradient
accumulation. After every epoch the adapter answers the validation chats through the same constrained decoding
and parser as the `transformers` backend; accuracy (its `defect_type` equals the label) chooses the adapter
kept, and `patience` epochs without a better one stop the run.

The loop is our own rather than TRL's SFTTrainer: TRL collates images with the model's processor, and
transformers 5 cannot build a Qwen2-VL processor without torchvision, which does not install beside the
project's CPU build of PyTorch (see `aivd.cloud.llm.transformers_backend`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from aivd.cloud.llm.prompts import AnswerError, parse_analysis
from aivd.cloud.llm.transformers_backend import (
    TRAINING_RECORD,
    ChatEncoder,
    ConstrainedGenerator,
    choose_device,
    decoding_schema,
    load_vlm,
)
from aivd.data.deeppcb import DatasetError
from aivd.training.common import seed_everything
from aivd.training.finetune_data import MANIFEST, TRAIN_FILE, VAL_FILE

ADAPTER_DIR = "adapter"
# The language model's projections (Qwen2-VL and Qwen2.5-VL names); the vision tower keeps its weights.
LANGUAGE_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class LoraTrainConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 1
    grad_accum: int = 8
    l2: float = 1e-4  # times the squared norm of all LoRA weights, added to the loss
    patience: int = 2  # epochs without a better validation accuracy before stopping
    max_steps: int | None = None  # optimizer steps in all; None: every epoch runs
    max_new_tokens: int = 256  # the validation answers' length bound (see `decoding_schema`)
    eval_limit: int | None = 200  # validation chats scored per epoch
    eval_batch_size: int = 4
    target_modules: str = LANGUAGE_PROJECTIONS
    seed: int = 0
    device: str = "auto"
    threads: int = 2


@dataclass(frozen=True)
class Chat:
    messages: list[dict]  # up to the user's turn
    images: list[Path]
    answer: str

    def pictures(self) -> list[np.ndarray]:
        pictures = []
        for path in self.images:
            picture = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if picture is None:
                raise DatasetError(f"{path}: cannot read the image")
            pictures.append(picture)
        return pictures


def load_chats(data_dir: Path, file_name: str) -> list[Chat]:
    """The chats of one split of `aivd finetune build` output; each must end with the assistant's answer."""
    path = Path(data_dir) / file_name
    if not path.is_file():
        raise DatasetError(f"{path}: not found; build the data with `aivd finetune build`")
    chats = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            *messages, answer = record["messages"]
            if answer["role"] != "assistant":
                raise ValueError("the last message is not the assistant's")
            chats.append(Chat(messages, [path.parent / name for name in record["images"]], answer["content"][0]["text"]))
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise DatasetError(f"{path}:{line_no}: not a chat with a final answer ({error})") from None
    return chats


def add_lora(model, config: LoraTrainConfig):
    """`model` with trainable LoRA matrices beside the target projections (peft's init: A random, B zero)."""
    from peft import LoraConfig, get_peft_model

    # peft annotates lora_alpha as int, but only divides by it (alpha / rank); --alpha is a float.
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha,  # type: ignore[arg-type]
                      lora_dropout=config.dropout, target_modules=config.target_modules)
    return get_peft_model(model, lora)


def lora_l2(model) -> torch.Tensor:
    """The squared norm of all LoRA weights (A and B)."""
    return sum((p.float().pow(2).sum() for name, p in model.named_parameters() if "lora_" in name and p.requires_grad), torch.tensor(0.0))


def validation_accuracy(generator: ConstrainedGenerator, chats: list[Chat], batch_size: int) -> dict:
    """Answer `chats` through constrained decoding and the strict parser; accuracy counts answers whose
    `defect_type` is the label's, `valid` those that parse at all (constrained decoding should make it all)."""
    correct = valid = 0
    for start in range(0, len(chats), batch_size):
        batch = chats[start : start + batch_size]
        answers = generator.generate([chat.messages for chat in batch], [chat.pictures() for chat in batch])
        for chat, answer in zip(batch, answers):
            label = parse_analysis(chat.answer, generator.class_names).defect_type
            try:
                predicted = parse_analysis(answer, generator.class_names).defect_type
            except AnswerError:
                continue
            valid += 1
            correct += predicted == label
    return {"accuracy": correct / len(chats) if chats else 0.0, "valid": valid / len(chats) if chats else 0.0}


def _mixed_precision(device: str) -> str:
    if not device.startswith("cuda"):
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def train_lora(data_dir: Path, model_dir: str | Path, out_dir: Path, config: LoraTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train an adapter on `data_dir`'s train split, keep the epoch with the best validation accuracy in
    `out_dir/adapter`, and write `out_dir/training.json`. Returns that record."""
    from accelerate import Accelerator

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest_path = data_dir / MANIFEST
    if not manifest_path.is_file():
        raise DatasetError(f"{data_dir}: no {MANIFEST}; build the data with `aivd finetune build`")
    manifest = json.loads(manifest_path.read_text())
    class_names = tuple(manifest["class_names"])
    train, val = load_chats(data_dir, TRAIN_FILE), load_chats(data_dir, VAL_FILE)[: config.eval_limit]
    if not train or not val:
        raise DatasetError(f"{data_dir}: {len(train)} training and {len(val)} validation chats; both are needed")

    decoding_schema(class_names, config.max_new_tokens)  # a bound too small for any answer fails before the model loads
    seed_everything(config.seed, config.threads)
    device = choose_device(config.device)
    accelerator = Accelerator(mixed_precision=_mixed_precision(device), gradient_accumulation_steps=config.grad_accum, cpu=device == "cpu")
    network, encoder = load_vlm(model_dir, None, device)
    network = add_lora(network, config)
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    # A list is a map-style dataset (torch's annotation asks for a Dataset subclass).
    loader: torch.utils.data.DataLoader[Chat] = torch.utils.data.DataLoader(
        train,  # type: ignore[arg-type]
        batch_size=config.batch_size, shuffle=True, collate_fn=lambda chats: _batch(encoder, chats),
        generator=torch.Generator().manual_seed(config.seed),
    )
    network, optimizer, loader = accelerator.prepare(network, optimizer, loader)
    generator = ConstrainedGenerator(accelerator.unwrap_model(network), encoder, class_names, config.max_new_tokens)

    out_dir.mkdir(parents=True, exist_ok=True)
    history, best, steps, waited, started = [], {"accuracy": -1.0}, 0, 0, time.time()
    for epoch in range(1, config.epochs + 1):
        network.train()
        losses = []
        for batch in loader:
            with accelerator.accumulate(network):
                with accelerator.autocast():
                    loss = network(**batch).loss + config.l2 * lora_l2(network)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.item())
            if not np.isfinite(losses[-1]):
                raise FloatingPointError(f"the loss is {losses[-1]} at epoch {epoch}, optimizer step {steps + 1}; lower --lr")
            if accelerator.sync_gradients:
                steps += 1
                if config.max_steps is not None and steps >= config.max_steps:
                    break
        network.eval()
        scores = validation_accuracy(generator, val, config.eval_batch_size)
        record = {"epoch": epoch, "steps": steps, "loss": float(np.mean(losses)), "first_loss": losses[0], "last_loss": losses[-1],
                  "val_accuracy": scores["accuracy"], "val_valid": scores["valid"], "elapsed_s": round(time.time() - started, 1)}
        history.append(record)
        if progress is not None:
            progress(record)
        if record["val_accuracy"] > best["accuracy"]:
            best, waited = {"epoch": epoch, "accuracy": record["val_accuracy"]}, 0
            accelerator.unwrap_model(network).save_pretrained(out_dir / ADAPTER_DIR)
        else:
            waited += 1
        stopped_early = waited >= config.patience
        if stopped_early or (config.max_steps is not None and steps >= config.max_steps):
            break

    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    result = {
        "base_model": str(model_dir), "data": str(data_dir), "class_names": list(class_names), "prompt": manifest["prompt"],
        "config": asdict(config), "device": device, "mixed_precision": accelerator.mixed_precision,
        "train_chats": len(train), "val_chats": len(val), "trainable_parameters": trainable,
        "adapter": str(out_dir / ADAPTER_DIR), "best": best, "history": history, "stopped_early": stopped_early,
        "elapsed_s": round(time.time() - started, 1),
    }
    (out_dir / TRAINING_RECORD).write_text(json.dumps(result, indent=2))
    return result


def _batch(encoder: ChatEncoder, chats: list[Chat]) -> dict:
    return encoder.encode([chat.messages for chat in chats], [chat.pictures() for chat in chats], [chat.answer for chat in chats])
