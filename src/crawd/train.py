"""Fine-tuning on the Hugging Face Trainer, so that ``accelerate launch`` scales it out.

What crawd adds to the stock Trainer:
- checkpoints hold the adapter only (``checkpoint-N/adapter``: safetensors + JSON, see
  :mod:`crawd.storage`) beside the Trainer's optimizer / scheduler / RNG files
  (torch's format, read back with ``weights_only=True``); each one is written into
  a staging folder and renamed into place: a kill mid-write never leaves a
  ``checkpoint-N`` that resume would pick up;
- a run resumes automatically from the newest complete checkpoint in its folder;
- a NaN or infinite loss stops the run with the step named; earlier checkpoints stay;
- the loss is normalised by the number of targets over all processes and accumulation
  steps, and the mitigation's probe terms by the number of probe rows over them, so
  ``accelerate launch`` on N processes trains the same model as one process with the same
  global batch (up to float rounding);
- an unwritable output folder, or one on a disk too full for the checkpoints, is an
  error before training starts;
- the mitigation's gender cues are fitted before training and at their refit steps
  (:class:`crawd.mitigation.cues.CueCallback`), as the eraser is;
- on an x86 CPU, float32 linear layers run through oneDNN (:mod:`crawd.onednn`: twice MKL's speed
  on AMD processors).

Per-step costs left out (measured in docs/performance.md): the checkpoints' torch files
are written without a CRC32 of their contents (computing it took 90% of the time of
saving AdamW's state, 1.3 s of 1.5 s for the concat head; the atomic rename guards
against partial files), and the Trainer's own NaN filter of the logged loss is off
(one host sync less per step; a non-finite loss stops the run anyway).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils.serialization
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from crawd.adapted import AdaptedModel
from crawd.config import CrawdConfig
from crawd.erasure import EraserCallback
from crawd.lm_examples import lm_examples
from crawd.mitigation.cues import FIT_ROWS
from crawd.onednn import onednn_linear
from crawd.storage import read_adapter, save_adapter, write_json

STAGING = ".staging"
RUN_FILE = "crawd_run.json"  # the method (and crawd's mode / head) of the run in a folder


@dataclass
class TrainSettings:
    """Optimisation settings (the paper: lr 1e-5, 5 epochs, n = 32; CPU defaults are shorter)."""

    max_steps: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-4
    seq_len: int = 32
    seed: int = 0
    save_steps: int = 20
    logging_steps: int = 10
    warmup_steps: int = 0
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    progress: bool = True
    long_docs: str = "truncate"  # causal LM: "chunk", "pack" or "truncate" (crawd.lm_examples)
    extra_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    resumed_from: str | None
    adapter_dir: str
    loss_history: list[dict[str, float]]
    examples: str = ""  # how the training rows became examples (causal LM)


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, seq_len: int,
             sensitive: list[int] | None = None, long_docs: str = "truncate") -> Dataset:
    """Token ids and labels for ``task``; other columns dropped.

    Classification texts are truncated to ``seq_len``; causal-LM rows become examples with
    per-token labels, documents longer than ``seq_len`` handled as ``long_docs`` says (see
    :mod:`crawd.lm_examples`). ``sensitive``: one integer id per row (the sensitive
    attribute, for models that ask for it, e.g. the adversarial baseline), kept as column
    ``sensitive_labels``.
    """
    if task == "lm":
        return lm_examples(dataset, tokenizer, seq_len, long_docs, sensitive)[0]

    def encode(rows: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(rows["text"], truncation=True, max_length=seq_len)
        enc["labels"] = rows["label"]
        return enc

    out = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    return out if sensitive is None else out.add_column("sensitive_labels", list(sensitive))


class Collator:
    """Right-pads a batch. Causal-LM labels: the examples' per-token labels padded with -100
    (without them, the input ids with padding set to -100)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: str) -> None:
        self.tokenizer, self.task = tokenizer, task

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = "right"
        labels = [f.pop("labels") for f in features] if "labels" in features[0] else None
        sensitive = [f.pop("sensitive_labels") for f in features] if "sensitive_labels" in features[0] else None
        enc = self.tokenizer.pad(features, return_tensors="pt")
        if sensitive is not None:
            enc["sensitive_labels"] = torch.tensor(sensitive, dtype=torch.long)
        if self.task == "lm" and labels is None:
            enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        elif self.task == "lm":
            width = enc["input_ids"].shape[1]
            enc["labels"] = torch.tensor([list(row) + [-100] * (width - len(row)) for row in labels], dtype=torch.long)
        else:
            enc["labels"] = torch.tensor(labels, dtype=torch.long)
        return dict(enc)


class CrawdTrainer(Trainer):
    """The stock Trainer with adapter-only, atomic checkpoints and a finite-loss guard."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The Trainer counts the loss's targets over all processes and accumulation steps
        # (num_items_in_batch); crawd's causal-LM loss shifts the labels inside the model,
        # so the count must skip position 0 as it does for transformers' own causal LMs.
        self._loss_shifts_labels = getattr(self.accelerator.unwrap_model(self.model), "task", None) == "lm"

    def compute_loss(self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The model's mean task loss reweighted to (sum over this batch) / (targets in the global batch), plus
        the mitigation's probe term (``outputs.terms``, a sum over this batch's probes per row it was expected
        to have) over the batches of one step.

        The stock Trainer multiplies the loss by the number of processes (DDP averages the gradients) and
        does not divide by the accumulation steps, because it expects a model that sums its loss and divides
        by ``num_items_in_batch``; crawd's models return a mean, so the task part is rescaled here by local /
        global target counts (times the stock factor, :meth:`_stock_loss_scale`), and the term, normalised by
        its batch's rows, which split evenly over processes and accumulation steps, is divided by the
        accumulation steps: after DDP's mean, both are what one process computes on the whole global batch. (The stock ``compute_loss``
        multiplies the model's loss in place, so the model is called here directly.)
        """
        counted = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        outputs = model(**inputs, **({"num_items_in_batch": num_items_in_batch} if counted else {}))
        loss, terms, labels = outputs.loss, getattr(outputs, "terms", None), inputs.get("labels")
        if counted and labels is not None:
            task = loss if terms is None else loss - terms
            targets = labels[..., 1:] if self._loss_shifts_labels else labels
            loss = self._stock_loss_scale() * task * targets.ne(-100).sum().to(task.device) / num_items_in_batch
            if terms is not None:
                loss = loss + terms / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def _stock_loss_scale(self) -> int:
        """The factor the stock ``compute_loss`` multiplies a ``num_items_in_batch``-normalised loss by (the
        processes that see their own batches)."""
        if not self.args.average_tokens_across_devices:
            return 1
        scale = self.accelerator.num_processes // self.get_tp_size()
        return scale if self.args.n_gpu <= 1 else self.args.n_gpu

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            # checkpoints also hold the Trainer's optimizer / RNG files: the adapter gets its own folder
            save_adapter(self.accelerator.unwrap_model(self.model), Path(output_dir or self.args.output_dir) / "adapter")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        _, tensors = read_adapter(Path(resume_from_checkpoint) / "adapter")
        missing = set(model.trainable_state_dict()) - set(tensors)
        if missing:
            raise ValueError(f"checkpoint {resume_from_checkpoint} does not match this model (missing {sorted(missing)[:3]})")
        model.load_state_dict(tensors, strict=False)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        staging = run_dir / STAGING
        name = f"checkpoint-{self.state.global_step}"
        self._get_output_dir = lambda trial=None: str(staging)  # the stock code writes under staging/
        try:
            with torch.utils.serialization.config.patch({"save.compute_crc32": False}):
                super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        _test_pause(self.state.global_step)
        self.accelerator.wait_for_everyone()  # every process has written its RNG state into staging/
        if self.args.should_save:
            for path in (staging / name).rglob("*"):
                if path.is_file():
                    with open(path, "rb") as handle:
                        os.fsync(handle.fileno())
            if (run_dir / name).exists():
                shutil.rmtree(run_dir / name)
            os.replace(staging / name, run_dir / name)
            shutil.rmtree(staging)
            for old in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()  # no process runs ahead while the rename happens

    def training_step(self, model: torch.nn.Module, inputs: dict, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = get_last_checkpoint(self.args.output_dir)
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}; stopped "
                f"(last good checkpoint: {last or 'none'}); lower the learning rate or check the data"
            )
        return loss


def _test_pause(step: int) -> None:
    """Test hook: ``CRAWD_TEST_CHECKPOINT_PAUSE="STEP:SECONDS"`` sleeps after checkpoint STEP is
    staged and before it is renamed into place, so a test can kill the run mid-write."""
    spec = os.environ.get("CRAWD_TEST_CHECKPOINT_PAUSE")
    if spec:
        at, _, seconds = spec.partition(":")
        if int(at) == step:
            time.sleep(float(seconds or 60))


def check_writable(out_dir: Path) -> None:
    """Fail before training if ``out_dir`` cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"  # one per process: ranks probe at once
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot write to output folder {out_dir}: {err.strerror or err}") from None


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Rough size of one checkpoint: the trained weights plus AdamW's two moments (float32)."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 3 * 4 * trained + (1 << 20)  # + 1 MiB of JSON, scheduler, RNG and trainer state


def check_free_space(out_dir: Path, model: torch.nn.Module, settings: "TrainSettings") -> None:
    """Fail before training if ``out_dir``'s disk cannot hold the checkpoints and the adapter.

    Up to three checkpoints exist at once (two kept, one being staged) plus the final
    adapter (a third of a checkpoint); half of that again is kept as a margin.
    """
    one = checkpoint_bytes(model)
    saves = min(3, settings.max_steps // max(settings.save_steps, 1))
    needed = int(1.5 * (saves * one + one // 3))
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise OSError(f"not enough free disk space for output folder {out_dir}: {free / 2**20:.1f} MiB free, "
                      f"about {needed / 2**20:.1f} MiB needed for checkpoints and the adapter")


def check_devices(settings: "TrainSettings") -> None:
    """bf16 is a CUDA option here: fail clearly when no CUDA device is present."""
    if settings.bf16 and not torch.cuda.is_available():
        raise ValueError("--bf16 needs a CUDA device; none found (train in float32 on CPU: drop --bf16)")


def run_identity(method: str, config: CrawdConfig) -> dict[str, str]:
    """What a run folder's checkpoints depend on: the method and, for crawd, its mode (and head)."""
    identity = {"method": method}
    if method == "crawd":
        identity["mode"] = config.mode
        if config.mode == "cross":
            identity["head"] = config.head
    return identity


def method_of(model: AdaptedModel) -> str:
    """The method name of a model built without one given: the name it is saved as when its class sets one
    (``vanilla``, ``crawd``), else its class name (the baselines, which save as ``vanilla``)."""
    return model.saved_as if "saved_as" in vars(type(model)) else type(model).__name__


def _earlier_identity(out_dir: Path) -> tuple[dict[str, str] | None, bool]:
    """The identity of the run already in ``out_dir`` and whether it was read from an adapter only
    (a run started before ``crawd_run.json`` existed: its adapter tells crawd from vanilla only)."""
    try:
        return json.loads((out_dir / RUN_FILE).read_text()), False
    except (OSError, json.JSONDecodeError):
        pass
    for folder in [out_dir / "adapter", *out_dir.glob("checkpoint-*/adapter")]:
        try:
            meta = json.loads((folder / "crawd_config.json").read_text())
            return run_identity(meta["method"], CrawdConfig.from_dict(meta["crawd"])), True
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return None, False


def check_run_folder(out_dir: str | os.PathLike, identity: dict[str, str]) -> None:
    """Refuse an output folder that holds another method's run, before anything is loaded or written."""
    earlier, from_adapter = _earlier_identity(Path(out_dir))
    if earlier is None:
        return
    if from_adapter:  # an adapter's "method" is what it is at inference: crawd or vanilla (the baselines too)
        identity = {**identity, "method": "crawd" if identity["method"] == "crawd" else "vanilla"}
    if earlier != identity:
        raise ValueError(f"--out holds a {_named(earlier)} run and this is a {_named(identity)} run; choose another "
                         "folder or the same method")


def _named(identity: dict[str, str]) -> str:
    details = ", ".join(f"{key} {value}" for key, value in identity.items() if key != "method")
    return identity["method"] + (f" ({details})" if details else "")


def train(
    model: AdaptedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: DatasetDict | Dataset,
    out_dir: str | os.PathLike,
    settings: TrainSettings | None = None,
    method: str | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``data["train"]`` (or ``data``) and save the adapter to ``out_dir/adapter``.

    Resumes from the newest complete ``out_dir/checkpoint-N`` when there is one; a folder
    holding another method's run is refused (``method``: the name recorded for this run,
    default :func:`method_of`).
    """
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    identity = run_identity(method or method_of(model), model.config)
    check_run_folder(out_dir, identity)
    check_devices(settings)
    check_writable(out_dir)
    check_free_space(out_dir, model, settings)
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)  # a checkpoint killed mid-write
    train_set = data["train"] if isinstance(data, DatasetDict) else data
    if len(train_set) == 0:
        raise ValueError("the training split is empty")
    column = getattr(model, "sensitive_column", None)  # a model that trains on the sensitive attribute
    if column and column not in train_set.column_names:
        raise ValueError(f"this method trains on the sensitive attribute (column {column!r}), which the training "
                         "data lacks: give data with a sensitive column (--sensitive-column)")
    sensitive = model.sensitive_ids(list(train_set[column])) if column else None
    examples = ""
    if model.task == "lm":
        tokenized, examples = lm_examples(train_set, tokenizer, settings.seq_len, settings.long_docs, sensitive)
        if settings.progress:
            print(examples)
    else:
        tokenized = tokenize(train_set, tokenizer, model.task, settings.seq_len, sensitive)
    write_json(out_dir / RUN_FILE, identity)
    collator = Collator(tokenizer, model.task)
    mitigation = getattr(model, "mitigation", None)
    if mitigation is not None:
        collator = mitigation.collator(collator, tokenizer)
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=settings.save_steps,
        logging_steps=settings.logging_steps,
        logging_nan_inf_filter=False,  # training_step stops at a non-finite loss
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=settings.bf16,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not settings.progress,
        use_cpu=not torch.cuda.is_available(),
        **settings.extra_args,
    )
    callbacks = []
    if getattr(model, "eraser", None) is not None:
        rows = tokenized.shuffle(seed=settings.seed).select(range(min(len(tokenized), model.config.erase_fit_rows)))
        plain = Collator(tokenizer, model.task)
        batches = [plain([dict(r) for r in rows.select(range(i, min(i + settings.batch_size, len(rows))))])
                   for i in range(0, len(rows), settings.batch_size)]
        callbacks.append(EraserCallback(model, batches, model.config.erase_refit_steps))
    if mitigation is not None and mitigation.cues is not None:
        rows = tokenized.shuffle(seed=settings.seed)
        rows = rows.select(range(min(len(rows), FIT_ROWS)))["input_ids"]
        callbacks.append(mitigation.cue_callback(model, tokenizer, rows))
    trainer = CrawdTrainer(model=model, args=args, train_dataset=tokenized, data_collator=collator,
                           callbacks=callbacks)
    resume = get_last_checkpoint(str(out_dir))
    summary_file = out_dir / "train_summary.json"
    if resume is not None and int(Path(resume).name.rsplit("-", 1)[1]) >= settings.max_steps and summary_file.is_file():
        # a finished run: the stock Trainer would take one more step from its last checkpoint
        trainer._load_from_checkpoint(resume)
        model.eval()
        return TrainResult(**{**json.loads(summary_file.read_text()), "resumed_from": resume, "seconds": 0.0})
    start = time.perf_counter()
    with onednn_linear():
        output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    model.eval()
    adapter_dir = out_dir / "adapter"
    if trainer.args.should_save:
        model.save_pretrained(str(adapter_dir))
    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    result = TrainResult(
        steps=trainer.state.global_step,
        final_loss=history[-1]["loss"] if history else float(output.training_loss),
        seconds=seconds,
        resumed_from=resume,
        adapter_dir=str(adapter_dir),
        loss_history=history,
        examples=examples,
    )
    if trainer.args.should_save:
        write_json(summary_file, asdict(result))
    if not math.isfinite(result.final_loss):
        raise FloatingPointError(f"training ended with a non-finite loss ({result.final_loss})")
    return result
