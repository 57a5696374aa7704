use super::*;

const MAC: [u8; 6] = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key() -> BindKey {
    BindKey::from_hex("231d39c1d7cc1ab1aee224cd096db932").unwrap()
}

#[test]
fn plain_power_and_energy() {
    // packet id 7, power 1234.56 W, energy 12.345 kWh
    let data = hex("4000070b40e2010a393000");
    let p = decode(&data, MAC, None).unwrap();
    assert_eq!(p.packet_id(), Some(7));
    assert_eq!(p.number("power"), Some(1234.56));
    assert_eq!(p.number("energy"), Some(12.345));
    assert!(!p.encrypted && p.unparsed == 0);
}

#[test]
fn the_specs_encrypted_example_decrypts() {
    // The example of the BTHome v2 encryption reference: temperature and humidity.
    let data = hex("41e445f3c9962b332211006c7c4519");
    let p = decode(&data, MAC, Some(&key())).unwrap();
    assert!(p.encrypted);
    assert_eq!(p.counter, Some(1_122_867));
    assert_eq!(p.number("temperature"), Some(25.06));
    assert_eq!(p.number("humidity"), Some(50.55));
}

#[test]
fn encode_round_trips_with_and_without_mac() {
    for include_mac in [false, true] {
        let data = encode(&hex("5c18fcffff"), MAC, Some(&key()), 9, include_mac);
        let p = decode(&data, [0; 6], Some(&key()));
        // Without the MAC in the payload, the nonce needs the real address.
        if include_mac {
            assert_eq!(p.unwrap().number("power"), Some(-10.0));
        } else {
            assert_eq!(p, Err(DecodeError::Decrypt));
            let p = decode(&data, MAC, Some(&key())).unwrap();
            assert_eq!(p.number("power"), Some(-10.0));
        }
    }
}

#[test]
fn refusals() {
    let plain = hex("40010b");
    assert_eq!(decode(&[], MAC, None), Err(DecodeError::Empty));
    assert_eq!(
        decode(&hex("2001"), MAC, None),
        Err(DecodeError::Version(1))
    );
    assert_eq!(
        decode(&plain, MAC, Some(&key())),
        Err(DecodeError::Downgrade)
    );
    let enc = encode(&plain[1..], MAC, Some(&key()), 1, false);
    assert_eq!(decode(&enc, MAC, None), Err(DecodeError::MissingKey));
    let wrong = BindKey::new([7; 16]);
    let enc = encode(&hex("0164"), MAC, Some(&key()), 1, false);
    assert_eq!(decode(&enc, MAC, Some(&wrong)), Err(DecodeError::Decrypt));
    assert_eq!(
        decode(&hex("4300"), MAC, None),
        Err(DecodeError::TooShort(2))
    );
    assert_eq!(
        decode(&hex("41000102030405"), MAC, Some(&key())),
        Err(DecodeError::TooShort(7))
    );
}

#[test]
fn framing_stops_at_unknown_ids_and_truncation_like_the_reference() {
    // battery 100 %, then unknown id 0x30: the rest cannot be framed.
    let p = decode(&hex("400164300102"), MAC, None).unwrap();
    assert_eq!(p.objects.len(), 1);
    assert_eq!(p.unparsed, 3);
    // power with only two of its three bytes.
    let p = decode(&hex("40016 40b0102".replace(' ', "").as_str()), MAC, None).unwrap();
    assert_eq!((p.objects.len(), p.unparsed), (1, 3));
}

#[test]
fn variable_length_and_event_objects() {
    // text "hi", raw 0xbeef, empty raw (skipped), command on with one arg, button press,
    // dimmer right 3 steps, firmware 4.2.1.0.
    let p = decode(
        &hex("403a01 3b0101aa 3c0203 5302 6869 5402beef 5400 f100010204"
            .replace(' ', "")
            .as_str()),
        MAC,
        None,
    )
    .unwrap();
    let values: Vec<&Value> = p.objects.iter().map(|o| &o.value).collect();
    assert_eq!(
        values,
        [
            &Value::Button(1),
            &Value::Command {
                opcode: 1,
                args: vec![0xaa]
            },
            &Value::Dimmer { event: 2, steps: 3 },
            &Value::Text("hi".into()),
            &Value::Raw(vec![0xbe, 0xef]),
            &Value::Firmware("4.2.1.0".into()),
        ]
    );
}

#[test]
fn signed_values_extend_their_sign() {
    assert_eq!(le_int(&[0xff]), -1);
    assert_eq!(le_int(&[0x00, 0x80]), -32768);
    assert_eq!(le_int(&[0xff, 0xff, 0xff, 0x7f]), i64::from(i32::MAX));
}
