"""Calls we make: the budgeted call, the provider client, where we may send, and event destinations."""
