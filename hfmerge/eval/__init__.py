"""Evaluation with lighteval: suites, runs (runner), and MergeBench's measures (scores)."""
