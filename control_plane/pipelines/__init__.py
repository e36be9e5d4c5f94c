"""ML CI/CD pipelines: one spec takes data to a promoted model, gated at every stage.

A pipeline run is a persisted row with ordered stage records (validate data, train,
evaluate, benchmark, approve, deploy); the control plane advances it, resumes it after a
restart, and stops it at the first stage that fails, with the reason.
"""
