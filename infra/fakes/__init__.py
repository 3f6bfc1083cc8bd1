"""Loopback fakes of provider APIs, speaking their documented contracts: for tests and the demo, never real."""
