"""What the report says about recipe revisions: which revision measured the documented rows a run refers to, what
trains under it, and the speedup each workload can reach (training_core/recipe_revisions.py,
training_core/trackers/flops.py). Pure functions of the documented rows and the stored rows; every sentence states
its numbers."""

from __future__ import annotations

from training_core.model.presets import preset_dict
from training_core.recipe_revisions import get_revision
from training_core.trackers.flops import model_shape
from training_core.trackers.gradients import human

from .documented import RefRow
from .guide import documented_flops, documented_mfu


def _preset(ref: RefRow) -> str:
    return "phi-3.5-vision" if ref.model == "Phi-3.5-vision" else "phi-3-vision-128k"


def decoder_and_head_params(preset: str) -> tuple[int, int]:
    """(decoder layer parameters, LM head + final norm parameters) of a preset."""
    s = model_shape(preset_dict(preset))
    d, head_dim = s.hidden_size, s.hidden_size // s.num_attention_heads
    qkv = d * (s.num_attention_heads + 2 * s.num_key_value_heads) * head_dim
    layer = qkv + d * d + d * 2 * s.intermediate_size + s.intermediate_size * d + 2 * d
    return s.num_hidden_layers * layer, d * s.vocab_size + d


def frozen_rows_explained(refs: list[RefRow], all_refs: dict[str, RefRow]) -> list[str]:
    """One sentence per documented table whose frozen-vision rows a run refers to and that a 2024-06 recipe measured:
    what trains there, the speedup bound of that workload and of a freeze that trains the decoder, the documented
    speedups, and the implied MFU under each revision."""
    out = []
    frozen = sorted({r.key: r for r in refs if r.settings.get("strategy") == "frozen_vision"
                     and r.recipe_revision == "2024-06" and "images_per_s" in r.values}.values(), key=lambda r: r.key)
    for table in sorted({r.table for r in frozen}):
        rows = [r for r in frozen if r.table == table]
        full = [r for r in all_refs.values() if r.table == table and r.settings.get("strategy") == "full"]
        base = full[0] if full else None
        full_flops = documented_flops(base, executed=True) if base else None
        old = documented_flops(rows[0], executed=True)
        new = documented_flops(rows[0], executed=True, revision="current")
        if not (full_flops and old and new):
            continue
        rev = get_revision("2024-06")
        decoder, head = decoder_and_head_params(_preset(rows[0]))
        speedups = ", ".join(f"{ratio:.2f}x ({_label(r)})" for r in rows if (ratio := _over_full(r, full)))
        mfus = ", ".join(f"{_label(r)} {m_old:.0%} (vs {m_new:.0%} as if today's recipe)" for r in rows
                         if (m_old := documented_mfu(r)) is not None and (m_new := documented_mfu(r, "current")))
        out.append(
            f"The documented frozen-vision rows of `{table}` ({', '.join(f'`{r.key}`' for r in rows)}) were measured "
            f"with the {rev.name} recipe (Cookbook {rev.cookbook_commit}, {rev.date}): its frozen tower runs with "
            "grad mode off inside the image embedder, which also computes the token embedding, and reentrant "
            f"checkpointing then gives no decoder layer a gradient, so only the LM head and the final norm "
            f"({human(head)} parameters) train, not the {human(decoder)} of the decoder. Such a step executes "
            f"{old / full_flops:.0%} of a full fine-tuning step's FLOPs (speedup bound {full_flops / old:.2f}x; "
            f"documented {speedups} over full fine-tuning with the same attention); a freeze that trains the decoder (the current recipe) saves only the CLIP "
            f"tower's backward: bound {full_flops / new:.2f}x. Implied MFU: {mfus}.")
    return out


def _over_full(ref: RefRow, full: list[RefRow]) -> float | None:
    """A documented row's images/s over the documented full fine-tuning row of its table with the same attention
    and node count."""
    same = [f for f in full if f.settings.get("flash_attention") == ref.settings.get("flash_attention")
            and f.settings.get("nodes", 1) == ref.settings.get("nodes", 1) and "images_per_s" in f.values]
    if not same or "images_per_s" not in ref.values:
        return None
    return ref.values["images_per_s"].value / same[0].values["images_per_s"].value


def _label(ref: RefRow) -> str:
    return "flash" if ref.settings.get("flash_attention") else "eager"


def measured_gradients(rows: list[dict]) -> list[str]:
    """What this run's cells trained: the cells whose first optimizer step left trainable parameters without a
    gradient (with the flag), and how many cells checked clean, by recipe revision."""
    checked = [r for r in rows if r.get("gradients")]
    if not checked:
        return []
    flagged = [r for r in checked if r["gradients"].get("flag")]
    lines = []
    for r in flagged:
        s = r["spec"]
        g = r["gradients"]
        lines.append(f"cell {r.get('cell', '?')} ({s.get('strategy')}, recipe {s.get('recipe_revision') or 'current'}): "
                     f"{g['flag']} (of {human(g['trainable_params'])})")
    clean = {}
    for r in checked:
        if not r["gradients"].get("flag"):
            rev = r["spec"].get("recipe_revision") or "current"
            clean[rev] = clean.get(rev, 0) + 1
    if clean:
        lines.append("no trainable parameter left without a gradient in " + ", ".join(
            f"{n} {rev} cell(s)" for rev, n in sorted(clean.items())))
    return lines
