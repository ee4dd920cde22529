"""AdaptedModel: a Hugging Face model with an optional LoRA adapter behind one small API.

It is the ``vanilla`` method (plain fine-tuning with the paper's LoRA) and the base
class of every method's model (:mod:`crawd.methods`): they share the forward pass, the
cached generation loop and adapter-only saving, so a comparison differs in the method alone.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from crawd.config import CrawdConfig
from crawd.erasure import ConceptEraser
from crawd.mitigation import PROBE_KEYS, CueInput, Mitigation
from crawd.models import ENCODER_MODEL_TYPES
from crawd.storage import save_adapter

#: LoRA settings kept in a saved adapter (enough to rebuild the same adapter on load).
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora",
             "layers_to_transform", "fan_in_fan_out")


def with_lora(base: PreTrainedModel, lora: LoraConfig) -> PeftModel:
    """``get_peft_model``, without the FutureWarning that peft's own call of transformers' renamed
    ``is_gradient_checkpointing`` prints (peft's to fix; it would print once per trained row)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(base, lora)


def task_of(model: nn.Module) -> str:
    """``"lm"`` for a causal LM, ``"classification"`` for a sequence classifier."""
    name = type(model.get_base_model() if isinstance(model, PeftModel) else model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "lm"
    if name.endswith("ForSequenceClassification"):
        return "classification"
    raise ValueError(
        f"unsupported model type {name}: crawd wraps causal LMs (AutoModelForCausalLM) and sequence "
        "classifiers (AutoModelForSequenceClassification)"
    )


class AdaptedModel(nn.Module):
    """A causal LM or sequence classifier, fine-tuned through LoRA (or fully).

    Args:
        base: a transformers ``*ForCausalLM`` / ``*ForSequenceClassification`` model, or
            a peft ``PeftModel`` around one (its adapter is then used as it is).
        tokenizer: the base model's tokenizer.
        config: only the LoRA fields are used here.
    """

    #: the method whose builder rebuilds this model from a saved folder (``crawd_config.json``'s "method")
    saved_as: ClassVar[str] = "vanilla"

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__()
        self.config = config or CrawdConfig()
        self.tokenizer = tokenizer
        self.task = task_of(base)
        hf = base.get_base_model() if isinstance(base, PeftModel) else base
        self.is_encoder = hf.config.model_type in ENCODER_MODEL_TYPES  # classifiers pool the first token
        use_lora = self.config.lora if self.config.lora is not None else not self.is_encoder
        if use_lora and not isinstance(base, PeftModel):
            base = with_lora(base, LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout,
                target_modules=list(self.config.lora_target_modules) if self.config.lora_target_modules else None,
            ))
        self.base = base
        if self.task == "classification":
            self.classifier.requires_grad_(True)  # a new classifier always trains
        self.eraser: ConceptEraser | None = None
        if self.config.erase:
            self.eraser = ConceptEraser(self.hidden_size).to(next(self.hf.parameters()).device)
            self.sensitive_column = self.config.erase_column  # train() hands over the attribute per row
            self.sensitive_values: list[str] | None = None
        self.mitigation: Mitigation | None = None
        if self.config.mitigates:
            if self.task != "lm":
                raise ValueError("equalize and neutralize apply to causal LMs only (they act on next-word "
                                 "predictions): set them to 0")
            self.mitigation = Mitigation(tokenizer, self.hidden_size, self.body_layers, self.config).to(
                next(self.hf.parameters()).device)

    # ---- the pieces of the base model -------------------------------------------------
    @property
    def hf(self) -> PreTrainedModel:
        """The transformers model (LoRA layers, if any, are injected in it)."""
        return self.base.get_base_model() if isinstance(self.base, PeftModel) else self.base

    @property
    def backbone(self) -> nn.Module:
        """The transformer body that returns the last hidden state H_x."""
        return self.hf.base_model

    @property
    def hidden_size(self) -> int:
        return self.hf.config.hidden_size

    @property
    def lora_config(self) -> dict[str, Any] | None:
        if not isinstance(self.base, PeftModel):
            return None
        raw = self.base.peft_config["default"].to_dict()
        return {k: sorted(raw[k]) if isinstance(raw[k], set) else raw[k] for k in LORA_KEYS if k in raw}

    @property
    def classifier(self) -> nn.Linear:
        """The classification layer of a sequence classifier (``classifier`` or ``score``)."""
        for name in ("classifier", "score"):
            layer = getattr(self.hf, name, None)
            if isinstance(layer, nn.Linear):
                return layer
        raise ValueError(
            f"unsupported classification head in {type(self.hf).__name__}: crawd needs a linear "
            "`classifier` (BERT family) or `score` (decoders) layer"
        )

    # ---- forward ----------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        """Run the backbone; returns its output (``last_hidden_state``, ``cache``)."""
        return self.erased(self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs))

    def erased(self, out: Any) -> Any:
        """The backbone output with the concept eraser (if any) applied to its last hidden state."""
        if self.eraser is not None:
            out.last_hidden_state = self.eraser(out.last_hidden_state)
        return out

    def sensitive_ids(self, values: list[Any]) -> list[int]:
        """Integer ids of the sensitive attribute per training row (the eraser's concept)."""
        values = [str(v) for v in values]
        if self.sensitive_values is None:
            self.sensitive_values = sorted(set(values))
        index = {v: i for i, v in enumerate(self.sensitive_values)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"erase: sensitive values {unknown[:5]} were not seen when the eraser was set up")
        return [index[v] for v in values]

    @torch.no_grad()
    def fit_eraser(self, batches: list[dict[str, torch.Tensor]]) -> None:
        """Fit the eraser on the H_x of ``batches`` (collated rows with ``sensitive_labels``), eraser off."""
        was_training = self.training
        self.eval()
        self.eraser.active = False
        states, concept = [], []
        try:
            device = next(self.hf.parameters()).device
            for batch in batches:
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                hidden = self.encode(ids, mask).last_hidden_state
                labels = batch["sensitive_labels"].to(device)
                if self.task == "lm":
                    keep = mask.bool()
                    states.append(hidden[keep]), concept.append(labels[:, None].expand_as(mask)[keep])
                else:
                    states.append(hidden[torch.arange(len(ids), device=device), self.pool_index(mask)])
                    concept.append(labels)
            self.eraser.fit(torch.cat(states).float(), torch.cat(concept))
        finally:
            self.eraser.active = True
            self.train(was_training)

    def final_representation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the head consumes per position: the backbone's last hidden state (CrawdModel adds its own)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.encode(input_ids, mask).last_hidden_state

    def pool_index(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Position pooled for classification: first token (encoders) or last non-padding token."""
        if self.is_encoder:
            return torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        return (positions * attention_mask.long()).argmax(-1)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The vector the base classifier consumes: BERT's pooler output, else the pooled token."""
        pooler = getattr(self.backbone, "pooler", None)
        if self.is_encoder and pooler is not None:
            return pooler(hidden)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.pool_index(attention_mask)]

    def base_head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The base model's own output function of its last hidden states."""
        if self.task == "lm":
            return self.softcap(self.hf.get_output_embeddings()(hidden))
        pooled = self.pooled(hidden, attention_mask)
        dropout = getattr(self.hf, "dropout", None)
        return self.classifier(dropout(pooled) if isinstance(dropout, nn.Dropout) else pooled)

    def encode_tracked(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       **kwargs: Any) -> tuple[Any, CueInput | None]:
        """:meth:`encode`, and what the mitigation's gender cues read of it (the ids and the cue layer's input;
        None without a readout): what :meth:`head` needs to place the gendered-word readout."""
        if self.mitigation is None:
            return self.encode(input_ids, attention_mask, **kwargs), None
        with self.mitigation.capturing(input_ids) as captured:
            out = self.encode(input_ids, attention_mask, **kwargs)
        return out, captured

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: dict | None = None,
                    **kwargs: Any) -> torch.Tensor:
        """Logits from the last hidden states, before the gendered words' readout; subclasses change
        this and only this. ``state`` carries what a head needs from earlier positions during cached
        generation."""
        return self.base_head(hidden, attention_mask)

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: dict | None = None,
             cue_input: CueInput | None = None, **kwargs: Any) -> torch.Tensor:
        """:meth:`head_logits`, with the mitigation's gendered-word readout (if any) where its gender cues on
        ``cue_input`` (:meth:`encode_tracked`) say the text has not given a gender yet."""
        logits = self.head_logits(hidden, attention_mask, state, **kwargs)
        if self.mitigation is None:
            return logits
        return self.mitigation.correct(hidden, logits, cue_input, attention_mask, state)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | SequenceClassifierOutput:
        """Same inputs and outputs as the base model's forward (``loss``, ``logits``).

        Causal LM ``labels`` are the input ids (-100 ignored), shifted inside as in
        transformers; classification ``labels`` are class indices.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("num_items_in_batch", None)  # passed by the Trainer
        kwargs.pop("sensitive_labels", None)  # the eraser's concept, used by fit_eraser only
        probes = {k: kwargs.pop(k) for k in PROBE_KEYS if k in kwargs}
        if self.mitigation is not None and self.training and labels is not None:
            return self.mitigation.training_forward(self, input_ids, attention_mask, labels, **probes, **kwargs)
        out, cue_input = self.encode_tracked(input_ids, attention_mask, **kwargs)
        logits = self.head(out.last_hidden_state, attention_mask, cue_input=cue_input)
        return self.output(self.task_loss(logits, labels), logits, out)

    @property
    def body_layers(self) -> nn.ModuleList:
        """The body's stack of transformer layers (``layers``, ``h`` or ``layer``)."""
        count = self.hf.config.num_hidden_layers
        for module in self.backbone.modules():
            if isinstance(module, nn.ModuleList) and len(module) == count:
                return module
        raise ValueError(f"no list of {count} layers found in {type(self.backbone).__name__}")

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Mean cross-entropy: next token (labels shifted inside, -100 ignored) or class."""
        if labels is None:
            return None
        if self.task == "lm":
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return F.cross_entropy(logits.float(), labels)

    def output(self, loss: torch.Tensor | None, logits: torch.Tensor,
               out: Any) -> CausalLMOutputWithPast | SequenceClassifierOutput:
        if self.task == "lm":
            return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # ---- generation -------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Greedy or sampled decoding with the base model's KV cache.

        Prompts in a batch must be left-padded. Returns the prompt ids followed by the
        new ids (finished rows are filled with ``pad_token_id``). ``use_cache=False``
        recomputes the whole sequence at every step (slow; for checking the cache).
        """
        if self.task != "lm":
            raise ValueError("generate() needs a causal LM; this model is a sequence classifier")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        eos = self.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        pad = next(t for t in (pad_token_id, self.tokenizer.pad_token_id, eos, 0) if t is not None)
        warpers = LogitsProcessorList()
        if do_sample:
            warpers += [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
            warpers += [TopKLogitsWarper(top_k)] if top_k else []
            warpers += [TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1.0 else []
        ids, cache, state = input_ids, None, {}
        new = input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            if use_cache:
                out, cue_input = self.encode_tracked(new, mask, position_ids=positions[:, -new.shape[1]:], cache=cache,
                                                     use_cache=True)
                cache = out.cache
                logits = self.head(out.last_hidden_state, mask[:, -new.shape[1]:], state, cue_input=cue_input)[:, -1]
            else:
                out, cue_input = self.encode_tracked(ids, mask, position_ids=positions)
                logits = self.head(out.last_hidden_state, mask, cue_input=cue_input)[:, -1]
            if do_sample:
                probs = warpers(ids, logits.float()).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            ids = torch.cat([ids, token[:, None]], dim=-1)
            mask = torch.cat([mask, (~done).long()[:, None].to(mask.dtype)], dim=-1)
            done |= token == eos if eos is not None else done
            new = token[:, None]
            if done.all():
                break
        return ids

    # ---- parameters and saving --------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights this method trains (adapter, new head, block, readout) and the fitted eraser and
        gender cues: all that is saved."""
        state = {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}
        for prefix, module in (("eraser", self.eraser), ("mitigation.cues", getattr(self.mitigation, "cues", None))):
            if module is not None:
                state.update({f"{prefix}.{name}": b.detach() for name, b in module.named_buffers()})
        return state

    def save_pretrained(self, directory: str) -> None:
        """Write the trained weights (safetensors) and the settings (JSON) to ``directory``."""
        save_adapter(self, directory)
