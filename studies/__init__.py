"""Studies built on the template, each beside its results: studies/<name>/."""
