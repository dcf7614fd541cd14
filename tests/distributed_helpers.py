"""An extractor that Ray workers run in tests/test_distributed.py: the descriptors extractor,
slowed down or failing on purpose, so that a test can kill or interrupt a run midway."""

from __future__ import annotations

import time
from typing import Any

from beatmap_fid.extractors.base import build_extractor


class PacedDescriptors:
    """The descriptors extractor (same name, config and vectors) whose ``embed`` sleeps
    ``delay_s`` first, and raises once it has been called ``fail_after`` times."""

    def __init__(self, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.inner = build_extractor("descriptors")
        self.name, self.config, self.dim = self.inner.name, self.inner.config, self.inner.dim
        self.delay_s, self.fail_after, self.calls = delay_s, fail_after, 0

    def items(self, source: Any, skipped: Any) -> Any:
        return self.inner.items(source, skipped)

    def beatmap_items(self, beatmap_file: Any, skipped: Any) -> Any:
        return self.inner.beatmap_items(beatmap_file, skipped)

    def embed(self, payloads: Any) -> Any:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("run interrupted on purpose")
        time.sleep(self.delay_s)
        return self.inner.embed(payloads)
