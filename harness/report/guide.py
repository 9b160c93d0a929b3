"""Put a measured row beside its documented row: comparability (with reasons), values, differences, status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training_core.model.presets import preset_dict
from training_core.recipe_revisions import get_revision
from training_core.trackers.flops import executed_flops, model_shape, peak_flops, trainable_for, training_flops

from .documented import RefRow

TOLERANCE = 0.10  # relative, for "within tolerance"
# The documented mean sequence length is 2443.23 tokens at num_crops 16; about 2400 of them are image tokens
# (4x4 or 3x4 crop grids of real pages) and the rest prompt and answer text: the implied-MFU assumption.
DOC_SEQUENCE = 2443.23
DOC_IMAGE_TOKENS = 2400
DOC_CROPS = 17
PRESET_MODEL = {"phi-3.5-vision": "Phi-3.5-vision", "phi-3-vision-128k": "Phi-3-vision", "tiny": "tiny preset"}


def model_family(spec: dict) -> str:
    model = spec.get("model", "")
    if model in PRESET_MODEL:
        return PRESET_MODEL[model]
    name = Path(model).name.lower()
    if "3.5" in name and "vision" in name:
        return "Phi-3.5-vision"
    if "phi-3-vision" in name:
        return "Phi-3-vision"
    return f"checkpoint {Path(model).name}"


def measured_gpu(env: dict) -> str:
    gpus = env.get("gpus") or []
    return gpus[0]["name"] if gpus else "cpu"


@dataclass
class Comparability:
    row: dict
    ref: RefRow | None
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return self.ref is not None and not self.reasons and self.row["status"] == "ok"

    @property
    def reason_text(self) -> str:
        return "; ".join(self.reasons)


def compare(row: dict, ref: RefRow | None, speed: bool) -> Comparability:
    c = Comparability(row, ref)
    spec, env = row["spec"], row.get("env") or {}
    if row["status"] != "ok":
        c.reasons.append(f"the cell did not finish ({row['status']})")
    if ref is None:
        c.reasons.append("no documented row" if not spec.get("reference") else f"unknown reference {spec['reference']}")
        return c
    family = model_family(spec)
    if family != ref.model:
        c.reasons.append(f"model: {family} vs documented {ref.model}")
    if speed:
        gpu = measured_gpu(env)
        if ref.gpu and ref.gpu.upper() not in gpu.upper():
            c.reasons.append(f"GPU: {gpu} vs documented {ref.gpu}")
        if env.get("world_size") != ref.gpus:
            c.reasons.append(f"GPU count: {env.get('world_size')} vs documented {ref.gpus}")
    _settings(c, spec, ref, speed)
    _revision(c, spec, ref)
    _data(c, spec, speed)
    return c


def _revision(c: Comparability, spec: dict, ref: RefRow) -> None:
    """A cell of another recipe revision trains something else (under 2024-06 a frozen tower leaves the decoder
    untrained): not comparable, whatever the other settings."""
    mine = spec.get("recipe_revision") or "current"
    if mine != ref.recipe_revision:
        rev = get_revision(ref.recipe_revision)
        c.reasons.append(f"recipe revision: {mine} vs documented {ref.recipe_revision} (Cookbook {rev.cookbook_commit}, "
                         f"{rev.date}: {rev.summary}); rerun with recipe_revision: {ref.recipe_revision}")


def _settings(c: Comparability, spec: dict, ref: RefRow, speed: bool) -> None:
    s = ref.settings
    checks = [("strategy", spec.get("strategy"), s.get("strategy")),
              ("global batch", spec.get("global_batch"), s.get("global_batch")),
              ("num_crops", spec.get("num_crops") or 16, s.get("num_crops")),
              ("precision", spec.get("precision"), s.get("precision"))]
    if "flash_attention" in s:
        checks.append(("flash attention", spec.get("attention") == "flash_attention_2", s["flash_attention"]))
    if not speed:
        checks += [("lr", spec.get("lr"), s.get("lr")), ("epochs", spec.get("epochs"), s.get("epochs"))]
        if "lora_rank" in s:
            checks.append(("LoRA rank", spec.get("lora_rank"), s["lora_rank"]))
    for name, mine, documented in checks:
        if documented is not None and mine != documented:
            c.reasons.append(f"{name}: {mine} vs documented {documented}")


def _data(c: Comparability, spec: dict, speed: bool) -> None:
    data = spec.get("data")
    if speed:
        if data == "synthetic" and spec.get("task") == "docvqa":
            c.notes.append("synthetic DocVQA twin, mean sequence length matched to the documented 2443 tokens")
        elif data == "synthetic":
            c.reasons.append(f"synthetic {spec.get('task')} data vs the documented DocVQA")
        return
    if spec.get("weights") != "pretrained":
        c.reasons.append("random weights: accuracy needs the pretrained checkpoint")
    if data == "synthetic":
        c.reasons.append("synthetic twin data vs the real dataset")


def status(measured: float | None, documented: float | None, higher_is_better: bool,
           tolerance: float = TOLERANCE) -> str:
    if measured is None or documented is None or documented == 0:
        return "n/a"
    change = (measured - documented) / documented
    if abs(change) <= tolerance:
        return "within tolerance"
    return "better" if (change > 0) == higher_is_better else "worse"


def diff_percent(measured: float | None, documented: float | None) -> float | None:
    if measured is None or documented in (None, 0):
        return None
    return (measured - documented) / documented * 100


def documented_flops(ref: RefRow, executed: bool = False, revision: str | None = None) -> float | None:
    """FLOPs of one documented example (see DOC_* assumptions) as the row's recipe revision trained it (or
    `revision`): model FLOPs, or with `executed` what checkpointing recomputes too. None for QLoRA (4-bit)."""
    strategy = ref.settings.get("strategy")
    if strategy not in ("full", "frozen_vision", "lora"):
        return None
    preset = "phi-3.5-vision" if ref.model == "Phi-3.5-vision" else "phi-3-vision-128k"
    revision = revision or ref.recipe_revision
    frozen = strategy == "frozen_vision" or (strategy == "lora" and get_revision(revision).lora_forces_frozen_vision)
    count = executed_flops if executed else training_flops
    return count(model_shape(preset_dict(preset)), [round(DOC_SEQUENCE)], DOC_CROPS, DOC_IMAGE_TOKENS,
                 trainable_for(strategy, frozen, revision))


def documented_mfu(ref: RefRow, revision: str | None = None) -> float | None:
    """The utilisation a documented throughput implies under the analytic FLOPs model, for the work the row's recipe
    revision did (or `revision`'s)."""
    precision = ref.settings.get("precision", "bf16")
    peak = peak_flops(ref.gpu or "", precision)
    images_per_s = ref.values.get("images_per_s")
    flops = documented_flops(ref, revision=revision)
    if peak is None or images_per_s is None or flops is None:
        return None
    return flops * images_per_s.value / (ref.gpus * peak)
