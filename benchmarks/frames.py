"""What one small frame costs through each stream layer (``fieldsync.bench._frames``).

python benchmarks/frames.py [--pairs 500] [--seconds 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from benchmarks import write_json
from fieldsync.bench._frames import LAYERS, frame_cost
from fieldsync.site import pki


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result: dict[str, object] = {"pairs": args.pairs}
    with tempfile.TemporaryDirectory(prefix="fieldsync-frames-") as tmp:
        pki.init_ca(Path(tmp))
        for layer in LAYERS:
            result[f"{layer}_us_per_frame"] = trio.run(frame_cost, layer, args.pairs, args.seconds, Path(tmp)) * 1e6
    print(f"frames: {args.pairs} loopback pairs, one 24-byte frame a second each way, CPU per frame sent+received")
    for layer, what in LAYERS.items():
        print(f"  {what:<38}: {result[f'{layer}_us_per_frame']:6.0f} us")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
