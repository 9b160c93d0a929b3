"""`RunSpec`: the frozen, validated description of one benchmark cell (defined once; the matrix runner imports it).

Every field has the recipe's default where the recipe has one (docs/RECIPE.md §1.3-1.8). A spec is validated at the
boundary: unknown keys, wrong types and impossible combinations fail with a message that names the field.
`run_id` is a stable hash of the normalised spec, so the same cell always has the same id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training_core.errors import UserError

STRATEGIES = ("full", "frozen_vision", "lora", "qlora")
PRECISIONS = ("bf16", "fp16", "fp32")
ATTENTIONS = ("eager", "sdpa", "flash_attention_2")
ENGINES = ("ddp", "zero1", "zero2", "zero3", "fsdp2")
# The engine the recipe trains each strategy with (the default: existing grids, run ids and rows are unchanged)
RECIPE_ENGINES = {"full": "zero2", "frozen_vision": "zero2", "lora": "ddp", "qlora": "ddp"}
# The engines each strategy can run on, and why not the others
ENGINES_FOR = {"full": ENGINES, "frozen_vision": ENGINES, "lora": ("ddp", "fsdp2"), "qlora": ("ddp",)}
_NOT_ON = {
    "lora": "LoRA is trained with DDP (the recipe) or FSDP2 here; DeepSpeed ZeRO holds nothing worth sharding for "
            "a frozen base (its optimiser states are the adapters')",
    "qlora": "QLoRA's 4-bit base (bitsandbytes Params4bit) is not sharded by FSDP2 or ZeRO here; use engine: ddp",
}
CHECKPOINTING_PATTERN = r"^(all|none|every-[1-9][0-9]{0,2})$"


# Fields added after run ids were first recorded; a None value is left out of the id.
_LATER_FIELDS = ("cpu_threads", "longrope_generation", "recipe_revision", "require_gradients", "engine",
                 "fsdp2_reshard", "activation_checkpointing")
# What the later fields mean when unset: written out explicitly they are the same cell, so the same run id.
_LATER_DEFAULTS = {"longrope_generation": "official", "recipe_revision": "current", "require_gradients": False,
                   "fsdp2_reshard": False}


class SpecError(UserError):
    """An invalid spec, worded for the user (names the field and the fix)."""


class RunSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # specs are strict JSON

    # what to train on
    task: str = "docvqa"
    data: str = "synthetic"  # "synthetic" (the task's twin), "hf" (the recipe's dataset from the cache), or a path
    # the model
    model: str = "tiny"  # a preset name or a checkpoint directory
    weights: Literal["random", "pretrained"] = "random"
    # how
    strategy: Literal["full", "frozen_vision", "lora", "qlora"] = "full"
    freeze_vision: bool | None = None  # None: the strategy's default (frozen for frozen_vision only)
    train_embedding: bool = False  # frozen_vision: keep the shared token embedding trainable (the recipe freezes it)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    attention: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    num_crops: int | None = Field(default=None, ge=1, le=16)  # None: the task's (16, UCF-101 4)
    # activation checkpointing (non-reentrant; reentrant under recipe_revision 2024-06): "all" (the recipe: every
    # decoder and CLIP layer), "none", or "every-K" (layers 0, K, 2K, ... of the decoder and of CLIP). Unset: from
    # `gradient_checkpointing` (the older spelling, kept for old grids: true = "all", false = "none")
    activation_checkpointing: str | None = Field(default=None, pattern=CHECKPOINTING_PATTERN)
    gradient_checkpointing: bool = True
    # the distributed engine (training_core/engine.py); unset: the recipe's for the strategy (RECIPE_ENGINES)
    engine: Literal["ddp", "zero1", "zero2", "zero3", "fsdp2"] | None = None
    # fsdp2 only: free each layer's gathered parameters after its forward (the ZeRO-3 analogue); false keeps them
    # until the backward (the ZeRO-2 analogue)
    fsdp2_reshard: bool | None = None
    # the recipe revision whose training behaviour the cell reproduces (training_core/recipe_revisions.py): None or
    # "current" (Cookbook f1cc970 on), "2024-06" (d2cdae5, the revision the guide's speed tables were measured with)
    recipe_revision: Literal["current", "2024-06"] | None = None
    # trainable parameters that get no gradient in the first optimizer step are always recorded and flagged; True
    # makes such a cell an `error`
    require_gradients: bool | None = None
    # batch: global = per_device x world size x gradient accumulation
    global_batch: int = Field(default=16, ge=1)
    per_device_batch: int = Field(default=1, ge=1)
    # hardware the cell is meant for (world size = nodes x gpus_per_node processes)
    gpu: str = Field(default="cpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # a path component and a word
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=1, ge=1)
    # LoRA (alpha None: round(rank x 2), the recipe's alpha ratio)
    lora_rank: int = Field(default=64, ge=1)
    lora_alpha: int | None = Field(default=None, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # optimiser (AdamW (0.9, 0.95), eps 1e-7, linear schedule, grad clip 1.0: fixed by the recipe)
    lr: float = Field(default=4e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    lr_warmup_steps: int = Field(default=50, ge=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    # what to measure
    mode: Literal["throughput", "accuracy"] = "throughput"
    warmup_steps: int = Field(default=2, ge=0)  # optimizer steps excluded from the measurement
    measured_steps: int = Field(default=3, ge=1)
    eval_limit: int | None = Field(default=None, ge=1)
    eval_batch: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=64, ge=1)
    # generation crossing 4096 positions (LongRoPE's switch): None/"official" keeps the cache as the official code
    # does; "recompute" drops it once, so cached generation equals cache-free generation (README: differences)
    longrope_generation: Literal["official", "recompute"] | None = None
    synthetic_train: int | None = Field(default=None, ge=1)  # twin sizes (None: enough for the steps)
    synthetic_eval: int = Field(default=50, ge=1)
    # loader processes per rank; None: the recipe's 4 (pinned memory, kept across epochs) on CUDA, 0 on a CPU
    dataloader_workers: int | None = Field(default=None, ge=0)
    # intra-op threads of each process on a CPU; None: torch's default (one per core). 1 keeps a measurement on a
    # shared machine steady: a busy core slows a 2-thread cell ~20x (threads wait on each other), a 1-thread one not
    cpu_threads: int | None = Field(default=None, ge=1)
    image_ablation: Literal["none", "blank"] = "none"  # "blank": every image replaced by a white one (a control)
    checkpoint_every: int | None = Field(default=None, ge=1)  # optimizer steps between checkpoints
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # what numpy and torch's generators take
    reference: str | None = None  # key of the documented row this cell reproduces

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from training_core.tasks import TASKS

        if value not in TASKS:
            raise ValueError(f"unknown task {value!r}; choose one of {sorted(TASKS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _checkpointing_spellings(cls, data):
        """`activation_checkpointing` and its older spelling `gradient_checkpointing` are one setting: each is filled
        from the other (every-1 is all), and a spec that gives both must give the same choice."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        policy, old = data.get("activation_checkpointing"), data.get("gradient_checkpointing")
        if policy == "every-1":
            policy = data["activation_checkpointing"] = "all"
        if isinstance(policy, str) and old is not None and isinstance(old, bool) and (policy != "none") != old:
            raise ValueError(f"activation_checkpointing: {policy!r} contradicts gradient_checkpointing: "
                             f"{str(old).lower()} (the older spelling of the same setting); give one of them")
        if isinstance(policy, str) and old is None:
            data["gradient_checkpointing"] = policy != "none"
        elif policy is None and isinstance(old, bool):
            data["activation_checkpointing"] = "all" if old else "none"
        elif policy is None and old is None:
            data["activation_checkpointing"] = "all"
        return data

    @model_validator(mode="after")
    def _combinations(self) -> RunSpec:
        if self.engine is not None and self.engine not in ENGINES_FOR[self.strategy]:
            raise ValueError(f"engine: {self.engine!r} cannot train strategy {self.strategy!r}: "
                             f"{_NOT_ON[self.strategy]}; choose one of {list(ENGINES_FOR[self.strategy])}")
        if self.fsdp2_reshard is not None and self.train_engine != "fsdp2":
            raise ValueError(f"fsdp2_reshard: only applies to engine 'fsdp2' (this cell's engine is "
                             f"{self.train_engine!r}); remove it")
        if self.train_engine == "fsdp2" and self.precision == "fp16":
            raise ValueError("engine: fsdp2 with precision fp16 is not built (the loss scaler over FSDP2's shards is "
                             "not implemented or tested here); use bf16, or fp16 on ddp or a ZeRO stage")
        if self.mode == "accuracy" and self.train_engine in ("zero3", "fsdp2"):
            raise ValueError(f"engine: {self.train_engine} shards the parameters, so every rank must run every forward "
                             "together; evaluation generates on each rank's own examples to its own lengths, which "
                             "would leave ranks waiting on each other (not built: generation in lockstep). Use "
                             "ddp, zero1 or zero2 for mode: accuracy")
        if self.revision == "2024-06" and self.train_engine != RECIPE_ENGINES[self.strategy]:
            raise ValueError(f"engine: the 2024-06 recipe revision replays the recipe as it ran, on its own engine "
                             f"({RECIPE_ENGINES[self.strategy]!r} for {self.strategy}); use recipe_revision: current "
                             "to choose another")
        per_step = self.world_size * self.per_device_batch
        if self.global_batch % per_step:
            raise ValueError(
                f"global_batch: {self.global_batch} is not a multiple of nodes x gpus_per_node x per_device_batch "
                f"= {per_step}; choose a global batch divisible by it"
            )
        if self.mode == "throughput" and self.gpu.lower() != "cpu" and self.warmup_steps == 0:
            raise ValueError("warmup_steps: 0 on a GPU throughput cell would measure the first step (CUDA context, "
                             "kernel selection, the allocator's first growth) as training speed; give at least 1")
        if self.weights == "pretrained" and self.model in _preset_names():
            raise ValueError(f"weights: 'pretrained' needs model to be a checkpoint directory, not the preset {self.model!r}")
        if self.train_embedding and self.strategy != "frozen_vision":
            raise ValueError("train_embedding: only applies to strategy 'frozen_vision'")
        if self.freeze_vision is False and self.strategy == "frozen_vision":
            raise ValueError("freeze_vision: false with strategy 'frozen_vision' is the 'full' strategy; use that")
        if self.recipe_revision == "2024-06":
            if self.train_embedding:
                raise ValueError("train_embedding: the 2024-06 recipe froze the image embedder by turning gradients "
                                 "off inside it, token embedding included; it cannot keep the embedding trainable "
                                 "(use recipe_revision: current)")
            if self.freeze_vision is False and self.strategy in ("lora", "qlora"):
                raise ValueError("freeze_vision: the 2024-06 recipe always froze the vision tower under LoRA "
                                 "('cannot train vision model with LoRA'); use recipe_revision: current")
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def grad_accum(self) -> int:
        return self.global_batch // (self.world_size * self.per_device_batch)

    @property
    def vision_frozen(self) -> bool:
        if self.revision == "2024-06" and self.strategy in ("lora", "qlora"):
            return True  # that revision forced the freeze under LoRA
        return self.strategy == "frozen_vision" if self.freeze_vision is None else self.freeze_vision

    @property
    def train_engine(self) -> str:
        """The engine that trains the cell: `engine`, or the recipe's for the strategy."""
        return self.engine or RECIPE_ENGINES[self.strategy]

    @property
    def checkpointing(self) -> str:
        """The activation-checkpointing policy: "all", "none" or "every-K"."""
        return self.activation_checkpointing or ("all" if self.gradient_checkpointing else "none")

    @property
    def revision(self) -> str:
        """The recipe revision's name ("current" when unset)."""
        return self.recipe_revision or "current"

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else round(self.lora_rank * 2)

    @property
    def data_version(self) -> str | None:
        """The generator version of the synthetic twin (`data: synthetic`); None for real data, which is
        identified by its path or source only (a changed dataset at the same path needs --force)."""
        if self.data != "synthetic":
            return None
        from training_core.data.synth import twin_version

        return twin_version(self.task)

    @property
    def run_id(self) -> str:
        """A hash of the normalised spec and the data version: a cell measured on other data has another id."""
        identity = {**self.model_dump(mode="json"), "data_version": self.data_version}
        defaults = {**_LATER_DEFAULTS, "engine": RECIPE_ENGINES[self.strategy],
                    # all / none is `gradient_checkpointing` true / false, which the id has always held
                    "activation_checkpointing": "all" if self.gradient_checkpointing else "none"}
        for name in _LATER_FIELDS:  # added later: at their default (unset or written out) ids stay as they were
            if identity[name] is None or (name in defaults and identity[name] == defaults[name]):
                del identity[name]
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ io
    @classmethod
    def parse(cls, data: dict, where: str = "spec") -> RunSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, where)) from None

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"{path}: cannot read the spec ({exc})") from None
        return cls.parse(data, where=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")


def format_validation_error(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field; valid fields: {', '.join(sorted(RunSpec.model_fields))}"
        lines.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
    return "\n".join(lines)


def _preset_names() -> set[str]:
    from training_core.model.presets import PRESETS

    return set(PRESETS)
