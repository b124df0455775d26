"""The HTTP side a client and the dashboard use: /v1 routes, their shapes, and the cross-site guard."""
