"""lm-evaluation-harness interop: a crawd model (any method) as the lm_eval model ``crawd``.

    import lm_eval
    import crawd.harness  # registers the model name "crawd" with lm_eval

    lm_eval.simple_evaluate(model="crawd", model_args="adapter=runs/a/adapter", tasks=["crows_pairs_english"])

Model arguments: ``adapter`` (a crawd adapter folder: ``crawd train``'s ``OUT/adapter``,
``save_pretrained`` or ``crawd export``; its base is loaded by the name it records) and
``base`` (alone: score that base model as it is; with ``adapter``: load the base from
there instead of the recorded name), ``device`` (default: CUDA when available), and
lm_eval's usual ``batch_size``, ``max_length``.

The class is lm_eval's :class:`~lm_eval.models.huggingface.HFLM` (tokenisation, batching,
every request type) with the forward pass and the generation of the crawd model, so a
CrAWD block, the in-attention decay and LoRA all take part. Generation runs to the
end-of-sequence token or ``max_gen_toks``; lm_eval then cuts the text at the task's stop
strings, as for any model. On an x86 CPU the float32 linear layers run through oneDNN, as in
``crawd eval`` (:mod:`crawd.onednn`). Needs lm-eval: ``pip install crawd[lm-eval]``.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ModuleNotFoundError as err:  # the optional extra
    raise ModuleNotFoundError("crawd.harness needs lm-evaluation-harness, which is not installed: "
                              "pip install 'crawd[lm-eval]'") from err

from crawd.loading import AutoCrawdModel
from crawd.models import base_name, load_model
from crawd.onednn import onednn_linear

__all__ = ["CrawdLM"]


@register_model("crawd")
class CrawdLM(HFLM):
    """lm_eval model ``crawd``: a crawd adapter on its base, or a base model alone (see the module doc)."""

    def __init__(self, adapter: str | None = None, base: str | None = None, device: str | None = None,
                 trust_remote_code: bool = False, **kwargs: Any) -> None:
        if adapter is None and base is None:
            raise ValueError("model_args needs adapter= (a crawd adapter folder) or base= (a model to score alone)")
        if adapter is not None:
            model = AutoCrawdModel.from_pretrained(adapter, base=base, trust_remote_code=bool(trust_remote_code))
            if model.task != "lm":
                raise ValueError(f"adapter {adapter} is a classifier; lm_eval scores causal language models")
            hf, tokenizer = model.hf, model.tokenizer
        else:
            hf, tokenizer = load_model(str(base), "lm", trust_remote_code=bool(trust_remote_code))
            model = None
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        (hf if model is None else model).to(target)
        super().__init__(pretrained=hf, tokenizer=tokenizer, backend="causal", **kwargs)
        self.crawd_model = model
        self.adapter = adapter
        self.base_name = base or base_name(hf)

    @onednn_linear()
    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.crawd_model is None:
            return super()._model_call(inps, attn_mask, labels)
        with torch.no_grad():
            return self.crawd_model(inps).logits

    @onednn_linear()
    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs: Any) -> torch.Tensor:
        if self.crawd_model is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        mask = generation_kwargs.pop("attention_mask", None)
        temperature = float(generation_kwargs.pop("temperature", 0.0) or 0.0)
        do_sample = generation_kwargs.pop("do_sample", None)
        do_sample = temperature > 0 if do_sample is None else bool(do_sample)  # lm_eval: temperature 0 is greedy
        top_k, top_p = generation_kwargs.pop("top_k", None), generation_kwargs.pop("top_p", None)
        if generation_kwargs:
            raise ValueError(f"crawd's generate does not take {', '.join(sorted(generation_kwargs))}")
        return self.crawd_model.generate(context, attention_mask=mask, max_new_tokens=max_length - context.shape[1],
                                         do_sample=do_sample, temperature=temperature if do_sample else 1.0,
                                         top_k=top_k, top_p=top_p, pad_token_id=self.tokenizer.pad_token_id)

    def get_model_info(self) -> dict[str, Any]:
        """What was scored (no hub lookups, unlike HFLM's)."""
        scored = self.model if self.crawd_model is None else self.crawd_model
        return {"base": self.base_name, "adapter": self.adapter,
                "model_num_parameters": sum(p.numel() for p in scored.parameters())}
