"""The storage contract on the embedded engine (chdb)."""

from __future__ import annotations

import pytest

from meshtrace.store import Store
from meshtrace.testing.contract import StoreContract


class TestEmbeddedStore(StoreContract):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, class_store: Store) -> Store:
        return class_store
