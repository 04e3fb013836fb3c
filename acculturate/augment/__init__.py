"""Augmentation with a model: back-translation paraphrases and Self-Instruct synthetic data.

Generators take the model explicitly and decode through :func:`acculturate.decode.generate`
(batched, KV cache). They sit beside ``prompting`` in the pipeline (they reuse its personas and
embedder). Each is resumable: finished rows are appended to ``<out>.partial.jsonl`` as they are
made and skipped on a rerun; the output file is written atomically at the end. Every generated row
records how it was made in ``meta["provenance"]``.
"""

from acculturate.augment.backtranslation import BackTranslateConfig, backtranslate
from acculturate.augment.self_instruction import SelfInstructConfig, self_instruct

__all__ = ["BackTranslateConfig", "SelfInstructConfig", "backtranslate", "self_instruct"]
