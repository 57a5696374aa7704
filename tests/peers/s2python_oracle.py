"""s2-python 0.11.1 as a second oracle for the messages the gateway emits.

Reads one S2 JSON message per line on stdin and parses each with s2-python's own
`S2Parser.parse_as_any_message`, which runs the pydantic model validators every
s2-python peer (FlexMeasures' CEM among them) runs on what it receives, e.g. "start_of_range
should not be higher than end_of_range". Prints one line per input line, in order:

    OK <message_type>
    REFUSED <message_type> <s2-python's reason on one line>

and exits 0 when stdin closes. The test decides what a refusal means.

Usage: s2python_oracle.py < messages.jsonl
"""

import json
import sys

from s2python.s2_parser import S2Parser


def verdict(line: str) -> str:
    kind = "?"
    try:
        kind = json.loads(line).get("message_type", "?")
        S2Parser.parse_as_any_message(line)
    except Exception as error:  # every refusal is reported, whatever raised it
        # S2ValidationError's own text is generic; pydantic's cause names the field.
        cause = error.__cause__ or error.__context__ or error
        reason = " ".join(str(cause).split())
        return f"REFUSED {kind} {type(error).__name__}: {reason}"
    return f"OK {kind}"


def main() -> int:
    for line in sys.stdin:
        line = line.strip()
        if line:
            print(verdict(line), flush=True)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
