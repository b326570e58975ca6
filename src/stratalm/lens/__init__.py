"""Level 5: the layer lens — what every layer and head of every family does.

Named points of the forward and interventions at them (points.py, trace.py), attention maps and
head statistics (attention.py), the logit lens through the family's own head (logit_lens.py),
linear CKA between layers and models (similarity.py), per-layer probes with control tasks
(probes.py), head importance and pruning (heads.py), the tuned lens (tuned.py), training
dynamics (dynamics.py), the offline HTML report (build.py gathers, report.py renders) and the
dataset-level `stratalm inspect` verbs (verbs.py). Names load on use.
"""
from __future__ import annotations

from ..lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "point_names": ".points", "trace": ".trace", "text_inputs": ".trace", "Trace": ".trace",
    "zero_heads": ".trace", "mean_heads": ".trace", "zero_neurons": ".trace", "mean_neurons": ".trace",
    "patch": ".trace",
    "patching_sweep": ".trace", "head_outputs": ".trace", "attention_maps": ".attention",
    "attention_statistics": ".attention", "logit_lens": ".logit_lens", "lens_head": ".logit_lens",
    "linear_cka": ".similarity", "cka_matrix": ".similarity", "cka_between": ".similarity",
    "sentence_probe": ".probes", "token_probe": ".probes", "report_data": ".build", "write_report": ".report",
    "head_importance": ".heads", "pruning_curve": ".heads", "head_groups": ".heads", "text_objective": ".heads",
    "finetuned_objective": ".heads", "TunedLens": ".tuned", "train_tuned_lens": ".tuned",
    "LayerDynamics": ".dynamics",
})

__all__ = ["point_names", "trace", "text_inputs", "Trace", "zero_heads", "mean_heads", "zero_neurons", "mean_neurons",
           "patch",
           "patching_sweep", "head_outputs", "attention_maps", "attention_statistics", "logit_lens", "lens_head",
           "linear_cka", "cka_matrix", "cka_between", "sentence_probe", "token_probe", "report_data", "write_report",
           "head_importance", "pruning_curve", "head_groups", "text_objective", "finetuned_objective", "TunedLens",
           "train_tuned_lens", "LayerDynamics"]
