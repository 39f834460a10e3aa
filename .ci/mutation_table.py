"""Per-file mutmut 3 results (run from the repository root after .ci/mutation): total, killed, survived,
timeout, no tests, ... read from mutants/**/*.py.meta, as a Markdown table."""
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

root = Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
cols = ["killed", "survived", "timeout", "no tests", "not checked", "suspicious", "segfault"]
print("| file | total | " + " | ".join(cols) + " |")
print("| --- | ---: |" + " ---: |" * len(cols))
total = Counter()
for meta in sorted(root.rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    c = Counter(status_by_exit_code[v] for v in codes.values())
    c["total"] = len(codes)
    total += c
    print(f"| {meta.name[:-5]} | {len(codes)} | " + " | ".join(str(c[k]) for k in cols) + " |")
print(f"| **all** | {total['total']} | " + " | ".join(str(total[k]) for k in cols) + " |")
