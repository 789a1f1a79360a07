"""Evaluation harness: report-generation and QA metrics, the CheXpert labeler, run reports."""
