"""acculturate: adapt an open LLM to a region, a culture or a domain, end to end.

The sub-packages are the pipeline, and imports flow one way:
``data -> models, adapters -> train, decode -> evaluate -> adapt -> cli``.
"""

__version__ = "0.1.0"
