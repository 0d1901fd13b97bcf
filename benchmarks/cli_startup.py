"""How long the `tlunet` console script takes to answer the commands a newcomer types first.

    python benchmarks/cli_startup.py [--rounds 5]

Each command runs as a fresh process (the console script beside this Python), `--rounds` times in
alternation; the table gives the median wall time against the 1.5 s target, and `import tlunet`
(TensorFlow included) as the cost the light commands avoid.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_S = 1.5
COMMANDS = [["--help"], ["--version"], ["train", "--help"], ["experiment", "--list"], ["models"]]


def _seconds(argv):
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    script = os.path.join(os.path.dirname(sys.executable), "tlunet")
    runs = {" ".join(["tlunet", *c]): [script, *c] for c in COMMANDS}
    runs["python -c 'import tlunet'"] = [sys.executable, "-c", "import tlunet"]
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, argv in runs.items():
            times[name].append(_seconds(argv))
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, median of {args.rounds} fresh processes\n")
    print("| command | seconds | target | met |\n|---|---:|---:|---|")
    for name, values in times.items():
        median = statistics.median(values)
        light = name.startswith("tlunet")
        print(f"| `{name}` | {median:.2f} | {f'{TARGET_S:.1f}' if light else '—'} | "
              f"{('yes' if median <= TARGET_S else 'NO') if light else '(what the light commands skip)'} |")


if __name__ == "__main__":
    main()
