"""The CDK app of the payment service: constructs mirroring the runtime, one stack, one pipeline."""
