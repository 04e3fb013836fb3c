"""Jobs: the end-to-end runs behind the CLI verbs (each verb calls one function here)."""
