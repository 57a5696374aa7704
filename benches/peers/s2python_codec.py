"""s2-python 0.11.1's codec rate, for `cargo bench --bench throughput` to compare with.

Reads one S2 JSON message from a file and, N times, parses it the way an s2-python peer
parses every frame it receives (`S2Parser.parse_as_any_message`, as
`s2python.connection` does: `json.loads`, then the message class's pydantic model with
its validators) and serialises it back the way one sends (`to_json()`, pydantic's
`model_dump_json` by alias without nulls). Prints one number on stdout: messages per
second over the N timed iterations (time.perf_counter), after one untimed round that
also proves the message parses.

Exits 1 with the reason on stderr when the message does not parse: a rate for a message
s2-python refuses would measure its error path.

Usage: s2python_codec.py <message.json> <iterations>
"""

import sys
import time

from s2python.s2_parser import S2Parser


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: s2python_codec.py <message.json> <iterations>", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as file:
        text = file.read()
    iterations = max(1, int(sys.argv[2]))
    try:
        S2Parser.parse_as_any_message(text).to_json()
    except Exception as error:  # whatever raised it, the bench must say why
        cause = error.__cause__ or error.__context__ or error
        print(f"s2-python refuses the message: {' '.join(str(cause).split())}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    for _ in range(iterations):
        S2Parser.parse_as_any_message(text).to_json()
    elapsed = time.perf_counter() - started
    print(f"{iterations / elapsed:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
