"""Providers' webhook checks, shared by the gateway (which verifies deliveries) and the provider adapter.

Pure functions, no I/O beyond what a caller injects; one module per provider. The provider adapter
builds callback URLs with them (Astria's token) and the gateway checks what arrives.
"""
