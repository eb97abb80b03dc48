"""`aivd finetune`: chat data from box-annotated data sets, LoRA adapters for a local vision-language model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

finetune_app = typer.Typer(
    help="Fine-tune a vision-language model as the cloud tier: build chat data, train a LoRA adapter.", no_args_is_help=True,
)


def _module(name: str):
    """aivd.NAME, or a clear exit when the 'vlm' and 'train' extras are not installed."""
    from aivd.cli.ui import import_extra

    return import_extra(name, "train,vlm", "fine-tuning")


def _load_samples(deeppcb: Optional[Path], voc: Optional[Path], yolo: Optional[Path], split: Optional[str]):
    """(samples, class names, source description) of the one data set given; its problems are printed, one line
    each, and the samples with them left out."""

    from aivd.cli.ui import error_line, fail
    from aivd.data.sources import open_data

    given = [(name, path) for name, path in (("deeppcb", deeppcb), ("voc", voc), ("yolo", yolo)) if path is not None]
    if len(given) != 1:
        raise fail("give exactly one data set: --deeppcb ROOT, --voc ROOT or --yolo ROOT")
    kind, root = given[0]
    source = open_data(root)
    if source.format != kind:
        raise fail(f"{root}: a {source.format} data set, not {kind}; give it as --{source.format}")
    split = split or ("trainval" if kind == "deeppcb" else "train")
    loaded = source.split(split)
    for problem in loaded.problems:
        error_line(problem)
    return loaded.samples, loaded.labels.names, f"{kind}:{root}:{split}"


@finetune_app.command("build")
def build_command(
    out: Path = typer.Option(..., help="New (or empty) folder for the data."),
    deeppcb: Optional[Path] = typer.Option(None, help="A DeepPCB root (the folder holding PCBData/)."),
    voc: Optional[Path] = typer.Option(None, help="A Pascal VOC root (Annotations/, JPEGImages/, optional ImageSets/Main/ and Templates/)."),
    yolo: Optional[Path] = typer.Option(None, help="An Ultralytics data YAML, or a folder holding data.yaml."),
    split: Optional[str] = typer.Option(
        None, help="DeepPCB: trainval (default) or test. VOC: an ImageSets/Main list; default train (train.txt, else "
                   "trainval.txt less val.txt, else every annotation). YOLO: a split the data YAML names; default train."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N images."),
    seed: int = typer.Option(0, help="Seeds the augmentation and the 90/10 train/validation split."),
    copies: int = typer.Option(1, min=1, help="Augmented examples per annotated box."),
    negatives: int = typer.Option(1, min=0, help="'No defect' windows per image (the edge's false alarms)."),
    prompt: Optional[str] = typer.Option(None, help="Prompt version (v1, ...) or a prompt YAML file. Default: the newest."),
    pixels_per_mm: Optional[float] = typer.Option(None, min=0.0, help="Imaging scale for sizes in mm. Default: 48 for DeepPCB, else unknown."),
    knowledge: Optional[Path] = typer.Option(
        None, help="Knowledge-base YAML with every class of the data set (`aivd kb init` writes one). Default: DeepPCB's."),
    pcb_facts: bool = typer.Option(
        True, "--pcb-facts/--no-pcb-facts", help="Measure copper and conductors where there are templates (PCB data sets)."),
) -> None:
    """Chat data (TRL messages JSONL and LLaMA-Factory sharegpt) from a box-annotated data set."""
    from aivd.cli.pipeline_options import DEEPPCB_PIXELS_PER_MM
    from aivd.cli.ui import console, fail, progress_bar
    from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeError
    from aivd.cloud.llm.prompts import PromptError
    from aivd.data.deeppcb import DatasetError

    finetune_data = _module("training.finetune_data")
    try:
        samples, class_names, source = _load_samples(deeppcb, voc, yolo, split)
    except DatasetError as error:
        raise fail(str(error)) from None
    samples = samples[:limit]
    if deeppcb is not None and pixels_per_mm is None:
        pixels_per_mm = DEEPPCB_PIXELS_PER_MM
    config = finetune_data.FinetuneDataConfig(
        seed=seed, copies=copies, negatives=negatives, pixels_per_mm=pixels_per_mm, prompt=prompt,
        knowledge=str(knowledge or DEFAULT_KNOWLEDGE), pcb_facts=pcb_facts,
    )
    try:
        with progress_bar() as progress:
            bar = progress.add_task("building", total=len(samples))
            manifest = finetune_data.build_finetune_data(
                samples, tuple(class_names), out, config, source,
                report=lambda line: progress.console.print(line, highlight=False, markup=False), advance=lambda: progress.advance(bar),
            )
    except (DatasetError, KnowledgeError, PromptError) as error:
        raise fail(str(error)) from None
    examples = manifest["examples"]
    console.print(
        f"{examples['train']} training and {examples['val']} validation chats ({manifest['defect']} defects, "
        f"{manifest['no_defect']} without) from {manifest['images']} images, {len(manifest['skipped'])} skipped -> {out}",
        highlight=False,
    )
    if not examples["train"]:
        raise fail("no training chat was written", code=1)


@finetune_app.command("train")
def train_command(
    data: Path = typer.Option(..., help="A folder written by `aivd finetune build`."),
    model: str = typer.Option(..., help="The base model: a local folder or a Hugging Face id already in the local cache."),
    out: Path = typer.Option(..., help="Output folder: adapter/ (the best epoch's LoRA adapter) and training.json."),
    rank: int = typer.Option(8, min=1, help="LoRA rank."),
    alpha: float = typer.Option(16.0, min=0.0, help="LoRA alpha; the update is scaled by alpha / rank."),
    dropout: float = typer.Option(0.05, min=0.0, max=1.0, help="Dropout on the LoRA input."),
    lr: float = typer.Option(2e-4, min=0.0),
    epochs: int = typer.Option(3, min=1),
    batch_size: int = typer.Option(1, min=1, help="Chats per forward pass."),
    grad_accum: int = typer.Option(8, min=1, help="Forward passes per optimizer step."),
    l2: float = typer.Option(1e-4, min=0.0, help="Weight of the squared norm of the LoRA weights in the loss."),
    patience: int = typer.Option(2, min=1, help="Epochs without a better validation accuracy before stopping."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after N optimizer steps (smoke tests)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Validation answers' length bound (characters, see docs)."),
    eval_limit: Optional[int] = typer.Option(200, min=1, help="Validation chats scored per epoch."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
) -> None:
    """Train a LoRA adapter on `aivd finetune build` data; the epoch with the best validation accuracy is kept."""
    from aivd.cli.ui import console, fail, shown
    from aivd.data.deeppcb import DatasetError

    lora = _module("training.lora")
    config = lora.LoraTrainConfig(
        rank=rank, alpha=alpha, dropout=dropout, lr=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, l2=l2,
        patience=patience, max_steps=max_steps, max_new_tokens=max_new_tokens, eval_limit=eval_limit, seed=seed, device=device,
        threads=threads,
    )

    def on_epoch(record: dict) -> None:
        console.print(f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  val accuracy {record['val_accuracy']:.4f}  "
                      f"schema-valid {record['val_valid']:.4f}", highlight=False)

    try:
        record = lora.train_lora(data, model, out, config, on_epoch)
    except (DatasetError, ValueError, OSError, FloatingPointError) as error:
        raise fail(str(error)) from None
    console.print(f"best epoch {record['best']['epoch']}: val accuracy {record['best']['accuracy']:.4f} -> {shown(record['adapter'])}", highlight=False)


@finetune_app.command("tiny-model")
def tiny_model_command(
    out: Path = typer.Option(..., help="Folder for the model."),
    seed: int = typer.Option(0),
) -> None:
    """Write a tiny randomly initialised Qwen2-VL (a few MB) to try the fine-tuning path without downloading weights."""
    from aivd.cli.ui import console, shown

    tiny = _module("cloud.llm.tiny")
    console.print(f"tiny Qwen2-VL -> {shown(tiny.build_tiny_vlm(out, seed))}", highlight=False)
