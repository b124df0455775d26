"""Webhook deliveries coming in: /webhooks, their payload shapes, and what is redacted before they are kept."""
