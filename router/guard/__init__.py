"""The guard stage: NeMo Guardrails input and output rails around dispatch (see `router.guard.pipeline`)."""
