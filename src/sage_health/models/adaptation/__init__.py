"""Model adaptation: LoRA adapter tuning of the causal LMs on dataset snapshots (:mod:`.lora`)."""
