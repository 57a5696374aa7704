#!/usr/bin/env python3
"""Writes ../data/bthome_corpus.txt: BTHome v2 service data to decode, one per line.

Line format: `name address bindkey-or-- hex`. Every object id of the BTHome v2 table
appears plain at least once; a selection also encrypted (with and without the MAC in
the payload), plus framing edge cases. Deterministic: re-running gives the same file.
Encryption uses `cryptography` (a bthome-ble dependency), independently of the Rust
encoder.
"""

import os
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

ADDR = "54:48:E6:8F:80:A5"
KEYS = ["231d39c1d7cc1ab1aee224cd096db932", "814aac74c4f17b6c1581e1ab87816b99"]

# (id, example data bytes) for every fixed-length object, two values each where the
# sign or scale matters.
FIXED = [
    (0x00, ["07"]), (0x01, ["64", "00"]), (0x02, ["ca09", "36f6"]), (0x03, ["bf13"]),
    (0x04, ["078a01"]), (0x05, ["138a14"]), (0x06, ["5e1f"]), (0x07, ["3e1d"]),
    (0x08, ["ca06", "fcff"]), (0x09, ["60"]), (0x0A, ["138a14", "000000"]),
    (0x0B, ["1d8a00", "40e201", "ffffff"]), (0x0C, ["020c"]), (0x0D, ["120c"]),
    (0x0E, ["020c"]), (0x0F, ["01"]), (0x10, ["01", "00"]), (0x11, ["00"]),
    (0x12, ["e204"]), (0x13, ["3301"]), (0x14, ["020c"]), (0x15, ["01"]), (0x16, ["00"]),
    (0x17, ["01"]), (0x18, ["01"]), (0x19, ["01"]), (0x1A, ["01"]), (0x1B, ["00"]),
    (0x1C, ["01"]), (0x1D, ["00"]), (0x1E, ["01"]), (0x1F, ["00"]), (0x20, ["01"]),
    (0x21, ["01"]), (0x22, ["01"]), (0x23, ["01"]), (0x24, ["00"]), (0x25, ["00"]),
    (0x26, ["01"]), (0x27, ["01"]), (0x28, ["00"]), (0x29, ["01"]), (0x2A, ["01"]),
    (0x2B, ["00"]), (0x2C, ["01"]), (0x2D, ["01"]), (0x2E, ["23"]), (0x2F, ["23"]),
    (0x3A, ["01", "04", "80", "00"]), (0x3C, ["0103", "0205"]), (0x3D, ["0960"]),
    (0x3E, ["2a2c0960"]), (0x3F, ["020c", "f4ff"]), (0x40, ["0c00"]), (0x41, ["4e00"]),
    (0x42, ["4e3400"]), (0x43, ["4e34"]), (0x44, ["4e34"]), (0x45, ["1101", "efff"]),
    (0x46, ["32"]), (0x47, ["8756"]), (0x48, ["dc87"]), (0x49, ["dc87"]),
    (0x4A, ["020c"]), (0x4B, ["138a14"]), (0x4C, ["41018a01"]), (0x4D, ["1372c400"]),
    (0x4E, ["8772c401"]), (0x4F, ["8772c401"]), (0x50, ["5d396164"]),
    (0x51, ["8756"]), (0x52, ["8756"]), (0x55, ["8772c401"]), (0x56, ["b301"]),
    (0x57, ["ea", "16"]), (0x58, ["ea", "01", "03", "f9"]), (0x59, ["ea"]),
    (0x5A, ["eaff"]), (0x5B, ["eaffffff"]), (0x5C, ["18fcffff", "40e20100"]),
    (0x5D, ["18fc", "e803"]), (0x5E, ["9c4e"]), (0x5F, ["0c00"]), (0x60, ["02"]),
    (0x61, ["dc05"]), (0x62, ["40e2ffff"]), (0x63, ["40e20100"]), (0x64, ["03"]),
    (0x65, ["05"]), (0xF0, ["0100"]), (0xF1, ["00010204"]), (0xF2, ["000106"]),
]

# Variable-length objects: (name, payload hex).
VARIABLE = [
    ("text", "530c48656c6c6f20576f726c6421"),
    ("text_invalid_utf8", "5302c328"),
    ("raw", "540c48656c6c6f20576f726c6421"),
    ("raw_empty_then_battery", "54000164"),
    ("command_on_no_args", "3b0001"),
    ("command_toggle_args", "3b0202aabb"),
    ("command_unknown_opcode", "3b0009"),
]

# Framing and header edge cases, plain: (name, full service data hex).
EDGES = [
    ("unknown_id_stops", "4001643001"),
    ("truncated_power", "40016 40b0102".replace(" ", "")),
    ("truncated_text_length", "400164" + "53"),
    ("mac_included", "42" + "a5808fe64854" + "0b40e201"),
    ("trigger_based", "44" + "3a01"),
    ("duplicate_types", "40" + "0b40e201" + "0b10270000"[0:8] + "0a138a14"),
    ("energy_meter", "40" + "0011" + "0a138a14" + "0b40e201" + "0c020c" + "4302 00".replace(" ", "")),
    ("smart_plug", "40" + "0012" + "1001" + "4d1372c400" + "5c40e20100" + "5d18fc" + "4ae808"),
    ("unordered_ids", "40" + "0b40e201" + "0164"),
    ("version_1", "20" + "0164"),
    ("empty_payload", "40"),
]

# Payloads also sent encrypted: (name, plaintext hex, key index, counter, include mac).
ENCRYPTED = [
    ("enc_spec_example", "02ca0903bf13", 0, 1122867, False),
    ("enc_power_energy", "000c0b40e2010a138a14", 0, 1, False),
    ("enc_signed_power_mac", "5c18fcffff", 1, 77, True),
    ("enc_plug", "00131001" + "4d1372c400" + "5c40e20100" + "4ae808", 1, 0xFFFFFFF0, False),
    ("enc_events", "3a01" + "3c0203" + "3b0101aa", 0, 5, True),
    ("enc_text", "530c48656c6c6f20576f726c6421", 1, 9, False),
    ("enc_battery_temp", "0164" + "02ca09", 0, 4242, False),
]


def encrypt(plain: bytes, key_hex: str, counter: int, include_mac: bool) -> bytes:
    info = 0x41 | (0x02 if include_mac else 0)
    mac = bytes.fromhex(ADDR.replace(":", ""))
    cnt = counter.to_bytes(4, "little")
    nonce = mac + b"\xd2\xfc" + bytes([info]) + cnt
    sealed = AESCCM(bytes.fromhex(key_hex), tag_length=4).encrypt(nonce, plain, None)
    head = bytes([info]) + (mac[::-1] if include_mac else b"")
    return head + sealed[:-4] + cnt + sealed[-4:]


def lines():
    for obj, samples in FIXED:
        for i, data in enumerate(samples):
            yield f"obj_{obj:02x}_{i}", "-", f"40{obj:02x}{data}"
    for name, payload in VARIABLE:
        yield name, "-", "40" + payload
    for name, data in EDGES:
        yield name, "-", data
    for name, plain, k, counter, mac in ENCRYPTED:
        yield name, KEYS[k], encrypt(bytes.fromhex(plain), KEYS[k], counter, mac).hex()
    # A wrong key and a damaged MIC must fail in both decoders.
    good = encrypt(bytes.fromhex("0b40e201"), KEYS[0], 3, False)
    yield "enc_wrong_key", KEYS[1], good.hex()
    yield "enc_damaged_mic", KEYS[0], (good[:-1] + bytes([good[-1] ^ 1])).hex()
    yield "enc_too_short", KEYS[0], "41" + "00" + "01000000" + "aabbccdd"
    yield "plain_with_key_downgrade", KEYS[0], "400b40e201"
    yield "enc_without_key", "-", good.hex()


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "..", "data", "bthome_corpus.txt")
    with open(out, "w", encoding="utf-8") as f:
        f.write("# BTHome v2 corpus: name address bindkey(or -) service-data-hex\n")
        f.write("# Generated by tests/peers/make_bthome_corpus.py; test keys only.\n")
        for name, key, data in lines():
            f.write(f"{name} {ADDR} {key} {data}\n")
    print(out, file=sys.stderr)


if __name__ == "__main__":
    main()
