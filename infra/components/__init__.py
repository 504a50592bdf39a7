"""One construct per runtime concern, composed by ``infra.stacks.payment_service``."""
