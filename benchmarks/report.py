"""Print the speed-up table of a pytest-benchmark JSON file.

    python benchmarks/report.py bench.json
"""
import json
import sys

from avfast._bench import format_table, ratio_rows

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        print(format_table(ratio_rows(json.load(f))))
