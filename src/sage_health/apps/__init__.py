"""Applications: radiology report drafting, clinical QA with citations, patient summaries."""
