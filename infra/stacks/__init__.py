"""The service stack and the pipeline stack."""
