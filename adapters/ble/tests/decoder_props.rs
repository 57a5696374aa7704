//! Property tests: no bytes from the air can panic the decoder or the GATT codecs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use s2gw_ble::bthome::{decode, encode};
use s2gw_ble::gatt::{Endian, Template, ValueFormat, decode_value};
use s2gw_ble::{BindKey, PacketFilter};

const MAC: [u8; 6] = [1, 2, 3, 4, 5, 6];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_service_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), key in any::<[u8; 16]>()) {
        let _ = decode(&data, MAC, None);
        let _ = decode(&data, MAC, Some(&BindKey::new(key)));
    }

    #[test]
    fn random_v2_payloads_never_panic(info in 0u8..8, payload in proptest::collection::vec(any::<u8>(), 0..48)) {
        // Version 2 with every flag combination, so the object parser sees the bytes.
        let mut data = vec![0x40 | info];
        data.extend(payload);
        if let Ok(p) = decode(&data, MAC, None) {
            prop_assert!(p.unparsed <= data.len());
            let mut filter = PacketFilter::default();
            let _ = filter.accept(&p, std::time::Instant::now());
        }
    }

    #[test]
    fn anything_encrypted_decrypts_to_the_same_objects(plain in proptest::collection::vec(any::<u8>(), 2..40), key in any::<[u8; 16]>(), counter in any::<u32>(), mac_in in any::<bool>()) {
        let key = BindKey::new(key);
        let sealed = decode(&encode(&plain, MAC, Some(&key), counter, mac_in), MAC, Some(&key)).unwrap();
        let open = decode(&encode(&plain, MAC, None, 0, false), MAC, None).unwrap();
        prop_assert_eq!(sealed.objects, open.objects);
        prop_assert_eq!(sealed.counter, Some(counter));
    }

    #[test]
    fn gatt_codecs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..8), text in ".{0,24}", value in any::<f64>()) {
        for (format, _) in ValueFormat::ALL {
            let _ = decode_value(&data, format, Endian::Big);
        }
        if let Ok(t) = Template::parse(&text) {
            let _ = t.render(Some(value));
        }
    }
}
