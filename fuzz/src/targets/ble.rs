//! BLE: BTHome advertisements (service data, plain and encrypted) through the decoder,
//! the packet filter and a sensor's state, and GATT values through the codecs and the
//! state, for the shipped BLE profiles.

use std::time::Instant;

use arbitrary::{Arbitrary, Unstructured};
use rand::Rng;
use rand::rngs::StdRng;
use s2gw_ble::bthome::decode;
use s2gw_ble::gatt::{Endian, Template, ValueFormat, decode_value};
use s2gw_ble::{BindKey, PacketFilter, ReadingField, SensorState};

use s2gw::config::{BleSection, Connection};

use crate::mutate::unstructured_bytes;
use crate::runner::Target;

const MAC: [u8; 6] = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];

/// One radio event: an advertisement or a GATT value.
#[derive(Debug, Arbitrary)]
pub enum Air {
    /// Service data of the BTHome UUID.
    Advert {
        /// The payload after the UUID.
        data: Vec<u8>,
        /// Whether the sensor has a bind key (a random one: wrong for the data).
        keyed: Option<[u8; 16]>,
    },
    /// A corpus advertisement with a few bytes changed.
    MutatedAdvert {
        /// Which corpus line.
        pick: u16,
        /// Byte positions and masks.
        flips: Vec<(u8, u8)>,
        /// Where to cut it, if anywhere.
        cut: Option<u8>,
    },
    /// A characteristic's value, as the device sent it.
    Gatt {
        /// Its bytes.
        data: Vec<u8>,
        /// The format the profile reads it as (index).
        format: u8,
        /// Big-endian or not.
        big: bool,
        /// The field it feeds.
        field: u8,
    },
    /// A write template as a profile would give it, rendered with a value.
    Template {
        /// The template text.
        text: String,
        /// The command's number.
        value: Option<f64>,
    },
}

/// Radio events into one sensor's state.
pub struct Ble {
    corpus: Vec<Vec<u8>>,
    /// The shipped BLE profiles, as a config gives them to a device.
    sections: Vec<BleSection>,
}

/// Both shipped BLE profiles, each on one device, through the config loader.
const CONFIG: &str = "[cem.home]\nurl = \"ws://127.0.0.1:9/s2\"\n\
    [[device]]\nid = \"meter\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n\
    [device.ble]\naddress = \"54:48:E6:8F:80:A5\"\n\
    [[device]]\nid = \"relay\"\nprofile = \"ble-relay\"\ncem = \"home\"\n\
    [device.ble]\naddress = \"54:48:E6:8F:80:A6\"\n";

fn hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

impl Ble {
    /// The target, with the BTHome corpus the BLE adapter's oracle test uses.
    pub fn new() -> anyhow::Result<Self> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../adapters/ble/tests/data/bthome_corpus.txt"
        );
        let text = std::fs::read_to_string(path)?;
        let corpus = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(hex)
            .collect();
        let config = s2gw::config::load_str(CONFIG, std::path::Path::new("fuzz.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sections = config
            .devices
            .into_iter()
            .filter_map(|d| match d.connection {
                Connection::Ble(section) => Some(section),
                _ => None,
            })
            .collect();
        Ok(Self { corpus, sections })
    }
}

impl Target for Ble {
    type Input = Vec<Air>;

    fn generate(&mut self, rng: &mut StdRng) -> Vec<Air> {
        let bytes = unstructured_bytes(rng, 512);
        let mut u = Unstructured::new(&bytes);
        let n = rng.random_range(1..=8);
        (0..n).filter_map(|_| Air::arbitrary(&mut u).ok()).collect()
    }

    fn execute(&mut self, input: &Vec<Air>) -> Result<(), String> {
        let mut filter = PacketFilter::default();
        let now = Instant::now();
        let mut states: Vec<SensorState> = self
            .sections
            .iter()
            .map(|s| SensorState::new(&s.profile, &s.connection))
            .collect();
        for (i, air) in input.iter().enumerate() {
            let Some(state) = states.get_mut(i % self.sections.len().max(1)) else {
                return Err("no BLE profile loaded".into());
            };
            match air {
                Air::Advert { data, keyed } => {
                    let key = keyed.map(BindKey::new);
                    if let Ok(packet) = decode(data, MAC, key.as_ref()) {
                        check_unparsed(packet.unparsed, data.len())?;
                        if filter.accept(&packet, now) {
                            state.apply_bthome(&packet, now);
                        }
                    }
                }
                Air::MutatedAdvert { pick, flips, cut } => {
                    let Some(original) = self
                        .corpus
                        .get(usize::from(*pick) % self.corpus.len().max(1))
                    else {
                        continue;
                    };
                    let mut data = original.clone();
                    for (at, mask) in flips {
                        if let Some(b) = data.get_mut(usize::from(*at) % original.len().max(1)) {
                            *b ^= mask;
                        }
                    }
                    if let Some(cut) = cut {
                        data.truncate(usize::from(*cut));
                    }
                    if let Ok(packet) = decode(&data, MAC, None) {
                        check_unparsed(packet.unparsed, data.len())?;
                        if filter.accept(&packet, now) {
                            state.apply_bthome(&packet, now);
                        }
                    }
                }
                Air::Gatt {
                    data,
                    format,
                    big,
                    field,
                } => {
                    let format = ValueFormat::ALL[usize::from(*format) % ValueFormat::ALL.len()].0;
                    let endian = if *big { Endian::Big } else { Endian::Little };
                    if let Ok(value) = decode_value(data, format, endian) {
                        let field = [
                            ReadingField::PowerW,
                            ReadingField::EnergyWh,
                            ReadingField::Soc,
                            ReadingField::State,
                        ][usize::from(*field) % 4];
                        state.apply_value(field, value, now);
                    }
                }
                Air::Template { text, value } => {
                    if let Ok(template) = Template::parse(text) {
                        let _ = template.render(*value);
                    }
                }
            }
            let _ = state.readings(now);
        }
        Ok(())
    }
}

fn check_unparsed(unparsed: usize, len: usize) -> Result<(), String> {
    if unparsed > len {
        return Err(format!("decoder claims {unparsed} unparsed bytes of {len}"));
    }
    Ok(())
}
