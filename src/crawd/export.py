"""Take a trained adapter to other tools: a peft adapter folder, a merged transformers model, or a crawd folder.

=====================  ==========================================  ================================
adapter's method       ``export`` (no merge)                       ``export(merge=True)``
=====================  ==========================================  ================================
vanilla and the        a standard peft LoRA folder                 a plain transformers model
baselines (LoRA)       (``PeftModel.from_pretrained``)             (``AutoModelFor*.from_pretrained``)
crawd, mode cross      a crawd folder                              refused: the cross-attention block
                       (``crawd.AutoCrawdModel.from_pretrained``)  and its head are new layers
crawd, mode self       a crawd folder                              refused: the decay acts on the
                                                                   attention at run time
=====================  ==========================================  ================================

Only what is base + LoRA at inference can be merged: the baselines train differently
(data transforms, loss terms) but deploy as vanilla does. Classification adapters (their
classifier head trains too) and full fine-tuning (no LoRA) export merged only.
Every export is written into a temporary folder beside ``out`` and renamed into place;
an existing non-empty ``out`` is refused, so nothing is overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from peft import PeftModel

from crawd.loading import AutoCrawdModel
from crawd.models import ALIASES
from crawd.storage import CONFIG_NAME, WEIGHTS_NAME, read_adapter, write_json

__all__ = ["MERGE_REFUSALS", "export"]

MERGE_REFUSALS: dict[str, str] = {
    "cross": "cannot merge a crawd adapter (mode cross): its cross-attention block and new head are layers that a "
             "plain transformers model does not have, not LoRA weights; export without --merge and load the folder "
             "with crawd.AutoCrawdModel.from_pretrained",
    "self": "cannot merge a crawd adapter (mode self): its decay changes the base model's attention at run time, "
            "token by token, which no weight can hold; export without --merge and load the folder with "
            "crawd.AutoCrawdModel.from_pretrained",
}
"""Why each CrAWD mode cannot become a plain transformers model (the error line of ``--merge``)."""

#: weights that act at run time beside LoRA (saved under these prefixes), which other tools cannot hold
RUN_TIME_PIECES = {"eraser": "a concept eraser (erase)",
                   "mitigation": "a gendered-word readout and its gender cues (neutralize, or equalize "
                                 "where the gender is open)"}


def export(adapter: str | os.PathLike, out: str | os.PathLike, merge: bool = False, base: str | None = None,
           trust_remote_code: bool = False) -> str:
    """Write ``adapter`` to ``out`` for other tools (see the module doc); returns a line saying how to load it.

    Args:
        adapter: a folder written by ``save_pretrained`` / ``crawd train``.
        out: a new (or empty) folder.
        merge: write a plain transformers model with the LoRA weights merged in.
        base: load the base from here instead of the name the adapter records; the export
            records this name.
    """
    meta, tensors = read_adapter(adapter)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not empty: choose a new folder (nothing is overwritten)")
    name = base or meta["base"].get("name_or_path") or ""
    kind = meta["method"]
    if kind == "crawd" and merge:
        raise ValueError(MERGE_REFUSALS[meta["crawd"].get("mode", "cross")])
    extra = sorted({name.split(".")[0] for name in tensors} & set(RUN_TIME_PIECES))
    if kind != "crawd" and extra:
        raise ValueError(f"adapter {adapter} also holds {' and '.join(RUN_TIME_PIECES[e] for e in extra)}, which "
                         "neither a peft LoRA folder nor a merged model holds; load it with "
                         "crawd.AutoCrawdModel.from_pretrained")
    if kind != "crawd" and not merge:
        if meta["lora"] is None:
            raise ValueError(f"adapter {adapter} holds fully fine-tuned weights, not LoRA, which a peft adapter "
                             "cannot hold: export it with --merge")
        if meta["task"] == "classification":
            raise ValueError(f"adapter {adapter} also trains the classifier head, which a peft LoRA folder does not "
                             "hold: export it with --merge")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if kind == "crawd":
            shutil.copyfile(Path(adapter) / WEIGHTS_NAME, staging / WEIGHTS_NAME)
            write_json(staging / CONFIG_NAME, {**meta, "base": {**meta["base"], "name_or_path": name}})
            how = f"crawd folder; load it with crawd.AutoCrawdModel.from_pretrained({str(out)!r})"
        else:
            model = AutoCrawdModel.from_pretrained(adapter, base=base, trust_remote_code=trust_remote_code)
            if merge:
                plain = model.base.merge_and_unload() if isinstance(model.base, PeftModel) else model.base
                plain.save_pretrained(staging)
                model.tokenizer.save_pretrained(staging)
                auto = "AutoModelForCausalLM" if meta["task"] == "lm" else "AutoModelForSequenceClassification"
                how = f"transformers model, LoRA merged; load it with {auto}.from_pretrained({str(out)!r})"
            else:
                config = model.base.peft_config["default"]
                config.base_model_name_or_path, config.task_type = name, "CAUSAL_LM"
                model.base.save_pretrained(staging)
                loader = (f"crawd.models.load_model({name!r})[0]" if name in ALIASES
                          else f"AutoModelForCausalLM.from_pretrained({name!r})")
                how = f"peft LoRA adapter; load it with PeftModel.from_pretrained({loader}, {str(out)!r})"
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"{out}: {how} (base: {name})"
