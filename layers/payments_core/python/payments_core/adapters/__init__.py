"""Adapters: the outside world behind small gateways (PostgreSQL, Stripe, Kafka, Secrets
Manager, campusG's user service and its session tokens). They translate, store and send; they
decide nothing about a payment's status."""
