"""Prompting: perplexity of a text (sliding_window.py) and zero/few-shot evaluation of decoders,
masked-LM encoders (cloze) and T5 (label scoring) on tasks defined in YAML (tasks.py, prompts.py,
scoring.py, calibration.py, metrics.py, evaluate.py). Shipped tasks: task_files/.

Names load on first use, so reading a task file (and the command's --help) needs no PyTorch."""
from ..lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "evaluate_task": ".evaluate", "perplexity": ".sliding_window", "decoder_loglikelihood": ".scoring",
    "seq2seq_loglikelihood": ".scoring", "cloze_loglikelihood": ".scoring", "encode_pair": ".scoring",
    "TaskSpec": ".tasks", "load_task": ".tasks", "task_names": ".tasks",
})

__all__ = ["evaluate_task", "perplexity", "decoder_loglikelihood", "seq2seq_loglikelihood", "cloze_loglikelihood",
           "encode_pair", "TaskSpec", "load_task", "task_names"]
