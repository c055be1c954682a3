# -*- test-case-name: tests.test_e2e -*-
"""
The client's commands, a module per area; L{backup_client.cli} parses the
command line and runs them.
"""
