"""acculturate: adapt an open LLM to a region, a culture or a domain, end to end.

The sub-packages are the pipeline, and imports flow one way (docs/architecture.md):
``data -> models -> adapters -> train, decode -> rag -> prompting -> augment, feedback -> evaluate
-> jobs -> serve, cli``. Each command-line verb runs one function of ``acculturate.jobs`` (the table
of config-driven verbs is ``acculturate/jobs/registry.py``).
"""

__version__ = "0.1.0"
