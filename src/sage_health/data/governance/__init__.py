"""Governance of the data ecosystem: the tamper-evident audit log (more to come: de-identification, policy, erasure)."""
