"""The runtime tests use the shared fixtures in tests/conftest.py (runtime, start_run, step,
pending_request) and these messages."""

REFUND = "Customer C-1001 was billed twice in March, please refund the $40 duplicate"
