"""Scenario tests: real servers on loopback, hostile clients, poison pills, killed runs."""
