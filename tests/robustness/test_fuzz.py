"""Coverage-guided fuzzing in CI (issue 20 part 2): each atheris target of fuzz_targets.py runs for a
few seconds from its corpus in tests/robustness/corpus/NAME. An uncaught exception is a failure;
libFuzzer writes the input that caused it (add it to the corpus once fixed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

from .fuzz_targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
SECONDS = 4


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(target: str, tmp_path: Path, figures) -> None:  # noqa: ANN001
    new = tmp_path / "new"  # what libFuzzer finds goes here, not into the repository
    new.mkdir()
    seeds = CORPUS / target
    p = subprocess.run([sys.executable, "-m", "tests.robustness.fuzz_targets", target,
                        f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=2048",
                        "-max_len=16384", f"-artifact_prefix={tmp_path}/", str(new), str(seeds)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = p.stdout + p.stderr
    crash = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*")) + list(tmp_path.glob("oom-*"))
    assert p.returncode == 0 and not crash, out[-4000:] + f"\ninput: {crash}"
    runs = re.search(r"Done (\d+) runs", out)
    assert runs, out[-2000:]
    cov = re.findall(r"cov: (\d+)", out)
    figures(target=target, inputs_fuzzed=int(runs.group(1)), seconds=SECONDS,
            seeds=len(list(seeds.iterdir())), new_corpus_entries=len(list(new.iterdir())),
            edges_covered=cov[-1] if cov else "?")
