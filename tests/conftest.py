"""
pytest glue for the trial-style suite: run every test in its own temporary
folder, as trial does (C{self.mktemp()} writes relative to the cwd).
"""

import pytest


@pytest.fixture(autouse=True)
def _trialLikeCwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
