"""Every fault and bad input the test suite tries, and what happened: kill-and-resume (tests/test_faults.py) and bad
input (tests/test_bad_input.py), each case by its id.

    .venv/bin/python benchmarks/faults.py

Runs both test files with pytest (a missing file is listed as such) and writes ``benchmarks/results/faults.{json,md}``:
per case, passed (survived: the run finished as an uninterrupted one would, or a clear error: exit 2 with one line
that says what to do, nothing half-written left) or failed, with the counts tried / survived / clear error / failed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from common import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/test_bad_input.py", "tests/test_faults.py")
DEFAULT_OUTCOME = {"test_faults": "survived", "test_bad_input": "clear error"}
"""What a passing case of each file shows, unless the test records its own `outcome` property."""


def run_tests(files: list[str], junit: Path) -> int:
    """pytest on `files`, reporting to `junit`; its exit status."""
    argv = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def cases(junit: Path) -> list[dict[str, str]]:
    """One row per test case of the JUnit report: file, id, outcome and, for a failure, its first line."""
    rows = []
    for testcase in ET.parse(junit).iter("testcase"):
        module = testcase.get("classname", "").rsplit(".", 1)[-1]
        name = testcase.get("name", "")
        problem = next((child for child in testcase if child.tag in ("failure", "error", "skipped")), None)
        properties = {p.get("name"): p.get("value") for p in testcase.iter("property")}
        if problem is None:
            outcome, detail = properties.get("outcome") or DEFAULT_OUTCOME.get(module, "passed"), ""
        else:
            xfail = problem.get("type") == "pytest.xfail"  # a case the test marks as a known, reported bug
            outcome = ("known bug" if xfail else "skipped") if problem.tag == "skipped" else "failed"
            detail = " ".join((problem.get("message") or "").split())[:200]
        case_id = name[name.index("[") + 1 : -1] if "[" in name else name
        rows.append({"file": module, "case": case_id, "outcome": outcome, "detail": detail})
    return rows


def markdown(result: dict) -> str:
    counts = result["counts"]
    lines = [
        f"# Faults and bad input ({result['machine']})",
        "",
        f"Tried {counts['tried']}: survived {counts['survived']}, clear error {counts['clear error']}, "
        f"known bug {counts['known bug']}, failed {counts['failed']}, skipped {counts['skipped']}."
        + "".join(f" Missing: {name}." for name in result["missing"]),
        "",
        "survived: killed or fed a damaged file, the same command finished as an uninterrupted run would. "
        "clear error: exit status 2, one line that says what to do, nothing half-written left for a later run.",
        "",
        "| file | case | outcome | detail |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['file']} | `{r['case']}` | {r['outcome']} | {r['detail'].replace('|', '/')} |" for r in result["cases"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    present = [name for name in TEST_FILES if (ROOT / name).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "faults.xml"
        status = run_tests(present, junit) if present else 5
        rows = cases(junit) if junit.is_file() else []
    counts = {
        key: sum(row["outcome"] == key for row in rows)
        for key in ("survived", "clear error", "known bug", "failed", "skipped")
    }
    result = {
        "machine": machine(),
        "pytest_exit_status": status,
        "missing": [name for name in TEST_FILES if name not in present],
        "counts": {"tried": len(rows), **counts},
        "cases": rows,
    }
    write_results("faults", result, markdown(result))


if __name__ == "__main__":
    main()
