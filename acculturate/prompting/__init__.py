"""Prompting strategies that wrap a model call: the `program` strategy and the sandbox it runs in."""
